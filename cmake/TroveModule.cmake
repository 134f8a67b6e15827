# Helpers every module uses, so that warnings, sanitizer variants, tests and fuzz targets are declared
# the same way everywhere.
#
#   trove_library(NAME SOURCES ... [PUBLIC_DEPS ...] [PRIVATE_DEPS ...] [SANITIZED])
#       Static library NAME. With SANITIZED (and TROVE_SANITIZER_VARIANTS on) also NAME_san, built with
#       ASan + UBSan (and libFuzzer coverage under clang); trove_* dependencies resolve to their _san
#       variants when those exist.
#   trove_test(NAME SOURCES ... [LIBS ...] [LABELS ...] [TIMEOUT s] [SANITIZED])
#       GoogleTest executable registered with ctest. SANITIZED links the _san libraries and builds the
#       test itself with the sanitizers.
#   trove_fuzz(NAME SOURCES ... LIBS ... [SECONDS s] [CORPUS dir] [DICT file])
#       libFuzzer target (clang only) run by ctest for a bounded time; DICT: a libFuzzer dictionary
#       (tokens of the input language, e.g. JSON keys).

set(TROVE_WARNINGS -Wall -Wextra)
set(TROVE_SAN_FLAGS -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  set(TROVE_HAVE_LIBFUZZER ON)
  list(APPEND TROVE_SAN_FLAGS_COMPILE_ONLY -fsanitize=fuzzer-no-link)
else()
  set(TROVE_HAVE_LIBFUZZER OFF)
  message(STATUS "trove: compiler is not clang; fuzz targets are not built (the Makefile uses clang)")
endif()

function(_trove_san_deps out)
  set(result "")
  foreach(dep ${ARGN})
    if(dep MATCHES "^trove_" AND TARGET ${dep}_san)
      list(APPEND result ${dep}_san)
    else()
      list(APPEND result ${dep})
    endif()
  endforeach()
  set(${out} ${result} PARENT_SCOPE)
endfunction()

function(trove_library name)
  cmake_parse_arguments(A "SANITIZED" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${name} STATIC ${A_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR}/generated)
  target_link_libraries(${name} PUBLIC ${A_PUBLIC_DEPS} PRIVATE ${A_PRIVATE_DEPS})
  target_compile_options(${name} PRIVATE ${TROVE_WARNINGS})
  if(A_SANITIZED AND TROVE_SANITIZER_VARIANTS)
    add_library(${name}_san STATIC ${A_SOURCES})
    target_include_directories(${name}_san PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR}/generated)
    _trove_san_deps(pub ${A_PUBLIC_DEPS})
    _trove_san_deps(priv ${A_PRIVATE_DEPS})
    target_link_libraries(${name}_san PUBLIC ${pub} PRIVATE ${priv})
    target_compile_options(${name}_san PRIVATE ${TROVE_WARNINGS} ${TROVE_SAN_FLAGS} ${TROVE_SAN_FLAGS_COMPILE_ONLY} -O1 -g)
    target_link_options(${name}_san INTERFACE ${TROVE_SAN_FLAGS})
  endif()
endfunction()

# One precompiled header for every unsanitized test (they share their compile options): GoogleTest, fmt
# and the standard headers the tests use, parsed once instead of in each test source (gtest alone is
# ~2.7 s a source on the 2-core dev machine). TROVE_TEST_PCH=OFF turns it off.
option(TROVE_TEST_PCH "Share a precompiled header among the unsanitized tests" ON)
function(_trove_test_pch)
  if(TARGET trove_test_pch)
    return()
  endif()
  # An executable, so that its flags are the tests' (clang refuses a PCH built without their -fPIE).
  set(src ${PROJECT_BINARY_DIR}/generated/trove_test_pch.cpp)
  if(NOT EXISTS ${src})
    file(WRITE ${src} "// Hosts the precompiled header the unsanitized tests reuse (cmake/TroveModule.cmake).\n"
                      "int main() { return 0; }\n")
  endif()
  add_executable(trove_test_pch ${src})
  target_link_libraries(trove_test_pch PRIVATE GTest::gtest fmt::fmt)
  target_compile_options(trove_test_pch PRIVATE ${TROVE_WARNINGS})
  target_precompile_headers(trove_test_pch PRIVATE
    <gtest/gtest.h> <fmt/format.h> <algorithm> <cmath> <cstdint> <cstring> <filesystem> <functional>
    <map> <memory> <random> <string> <string_view> <thread> <vector>)
endfunction()

function(trove_test name)
  cmake_parse_arguments(A "SANITIZED" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  if(A_SANITIZED AND TROVE_SANITIZER_VARIANTS)
    _trove_san_deps(libs ${A_LIBS})
    target_compile_options(${name} PRIVATE ${TROVE_WARNINGS} ${TROVE_SAN_FLAGS} -O1 -g)
    target_link_options(${name} PRIVATE ${TROVE_SAN_FLAGS})
    list(APPEND A_LABELS sanitized)
  else()
    set(libs ${A_LIBS})
    target_compile_options(${name} PRIVATE ${TROVE_WARNINGS})
    if(TROVE_TEST_PCH)
      _trove_test_pch()
      target_precompile_headers(${name} REUSE_FROM trove_test_pch)
    endif()
  endif()
  target_link_libraries(${name} PRIVATE ${libs} GTest::gtest GTest::gtest_main Threads::Threads)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  add_test(NAME ${name} COMMAND ${name} WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 300)
  endif()
  set_tests_properties(${name} PROPERTIES LABELS "${A_LABELS}" TIMEOUT ${A_TIMEOUT}
    ENVIRONMENT "TROVE_SOURCE_DIR=${PROJECT_SOURCE_DIR};TROVE_BINARY_DIR=${PROJECT_BINARY_DIR};TROVE_EXE=$<TARGET_FILE:trove>;ASAN_OPTIONS=detect_leaks=1:abort_on_error=1;UBSAN_OPTIONS=print_stacktrace=1")
endfunction()

function(trove_fuzz name)
  cmake_parse_arguments(A "" "SECONDS;CORPUS;DICT" "SOURCES;LIBS" ${ARGN})
  if(NOT TROVE_HAVE_LIBFUZZER OR NOT TROVE_SANITIZER_VARIANTS)
    return()
  endif()
  if(NOT A_SECONDS)
    set(A_SECONDS 60)
  endif()
  add_executable(${name} ${A_SOURCES})
  _trove_san_deps(libs ${A_LIBS})
  target_compile_options(${name} PRIVATE ${TROVE_WARNINGS} ${TROVE_SAN_FLAGS} -fsanitize=fuzzer -O1 -g)
  target_link_options(${name} PRIVATE ${TROVE_SAN_FLAGS} -fsanitize=fuzzer)
  target_link_libraries(${name} PRIVATE ${libs})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  set(corpus_work ${CMAKE_CURRENT_BINARY_DIR}/${name}_corpus)
  file(MAKE_DIRECTORY ${corpus_work})
  set(dirs ${corpus_work})
  if(A_CORPUS)
    list(APPEND dirs ${A_CORPUS})
  endif()
  set(dict "")
  if(A_DICT)
    set(dict -dict=${A_DICT})
  endif()
  add_test(NAME ${name}
           COMMAND ${name} -max_total_time=${A_SECONDS} -print_final_stats=1 -rss_limit_mb=4096 ${dict} ${dirs}
           WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  math(EXPR t "${A_SECONDS} + 120")
  set_tests_properties(${name} PROPERTIES LABELS "fuzz;sanitized" TIMEOUT ${t}
    ENVIRONMENT "ASAN_OPTIONS=detect_leaks=1:abort_on_error=1;UBSAN_OPTIONS=print_stacktrace=1")
endfunction()

# Node-based oracle tests (llama.cpp through node-llama-cpp, the reference tokenizer, the SDKs).
# Runs `node SCRIPT ARGS...` from the source root; node_modules/ there is installed by `make test`.
# COST: ctest starts tests of higher cost first (before it has timings of its own), so a long test
# runs beside the short ones instead of alone at the end.
function(trove_node_test name script)
  cmake_parse_arguments(A "" "TIMEOUT;COST" "ARGS;LABELS;DEPENDS_TARGETS" ${ARGN})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 600)
  endif()
  add_test(NAME ${name} COMMAND node ${script} ${A_ARGS} WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  set_tests_properties(${name} PROPERTIES LABELS "oracle;${A_LABELS}" TIMEOUT ${A_TIMEOUT}
    ENVIRONMENT "TROVE_SOURCE_DIR=${PROJECT_SOURCE_DIR};TROVE_BINARY_DIR=${PROJECT_BINARY_DIR};TROVE_EXE=$<TARGET_FILE:trove>")
  if(A_COST)
    set_tests_properties(${name} PROPERTIES COST ${A_COST})
  endif()
endfunction()
