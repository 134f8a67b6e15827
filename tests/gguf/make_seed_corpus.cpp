// Writes the fuzz seed corpus: tests/gguf/corpus/every-type.gguf. Run by hand when the test file's
// layout changes: build/tests/gguf/make_gguf_seed_corpus tests/gguf/corpus
#include <cstdio>
#include <string>

#include "tests/gguf/gguf_test_files.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  trove::gguf::testing::write_every_type_file(std::string(argv[1]) + "/every-type.gguf");
  return 0;
}
