// Small GGUF files built in memory for the reader tests and the fuzz seed corpus.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace trove::gguf::testing {

// A file with every metadata value type (including nested arrays) and one tensor of each supported
// type, written by GgufWriter to `path`. Returns the file's bytes.
std::vector<uint8_t> write_every_type_file(const std::string& path);

}  // namespace trove::gguf::testing
