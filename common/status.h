// trove::Status and trove::Result<T>: how errors cross module edges.
//
// A Status is either ok or carries a code and a message written for a person: it names the thing,
// the problem and, where there is one, what to do ("tensor blk.3.ffn_down.weight has type IQ2_XXS,
// which trove does not support; supported: F32 F16 BF16 Q8_0 Q4_K Q5_K Q6_K"). Exceptions do not
// cross module boundaries; inside a module a function may throw and convert at its public edge.
//
// Result<T> holds a T or a non-ok Status. Accessing value() of an error Result aborts with the
// message (a programming error, not a user error). Both types are cheap to move and not thread-safe
// to mutate concurrently (like any value type).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace trove {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,    // the caller's input is malformed (a request, a CLI flag, a file's bytes)
  kNotFound,           // a named thing does not exist
  kCorruption,         // stored bytes fail a check (checksum, magic, bounds)
  kIoError,            // the OS refused (open, read, write, mmap, disk full)
  kUnsupported,        // valid input that trove deliberately does not handle
  kResourceExhausted,  // out of memory, queue full, context too long
  kFailedPrecondition, // wrong state (store locked by another writer, device lost)
  kInternal,           // a bug in trove
};

std::string_view status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // ok
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }
  static Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
  static Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status Corruption(std::string m) { return {StatusCode::kCorruption, std::move(m)}; }
  static Status IoError(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
  static Status Unsupported(std::string m) { return {StatusCode::kUnsupported, std::move(m)}; }
  static Status ResourceExhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
  static Status FailedPrecondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
  static Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "Corruption: block 1f2e… failed its checksum" — for logs and CLI output.
  std::string ToString() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {    // NOLINT: implicit by design
    if (std::get<Status>(v_).ok()) {
      v_ = Status::Internal("Result constructed from an ok Status without a value");
    }
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { check(); return std::get<T>(v_); }
  const T& value() const& { check(); return std::get<T>(v_); }
  T&& value() && { check(); return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  void check() const {
    if (!ok()) {
      std::fprintf(stderr, "trove: fatal: value() of an error Result: %s\n",
                   std::get<Status>(v_).ToString().c_str());
      std::abort();
    }
  }
  std::variant<T, Status> v_;
};

}  // namespace trove

// Returns early with the Status of `expr` when it is not ok.
#define TROVE_RETURN_IF_ERROR(expr)            \
  do {                                         \
    ::trove::Status _trove_st = (expr);        \
    if (!_trove_st.ok()) return _trove_st;     \
  } while (0)

// An invariant that stays checked in Release builds: a violated one is a trove bug, so it aborts
// with the condition and the place rather than continue with wrong state.
#define TROVE_CHECK(cond)                                                                   \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      std::fprintf(stderr, "trove: invariant violated at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                         \
    }                                                                                       \
  } while (0)
