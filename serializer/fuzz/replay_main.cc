// envelope_fuzz_replay: runs the fuzz target over files (a seed corpus, or
// crashes found by libFuzzer) without libFuzzer, so every build can replay
// them. `--write-seeds DIR` writes the seed corpus from sample objects.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

#include "serializer/fuzz/fuzz_types.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

namespace fs = std::filesystem;

void WriteSeed(const fs::path& dir, const std::string& name, const zcstore::fuzz::FuzzModel& m) {
  auto s = zcstore::Serialize(m).value();
  std::vector<uint8_t> input = {static_cast<uint8_t>(s.buffers.size())};
  for (auto& b : s.buffers) {
    auto len = static_cast<uint16_t>(b.size());
    input.push_back(static_cast<uint8_t>(len));
    input.push_back(static_cast<uint8_t>(len >> 8));
  }
  auto* e = reinterpret_cast<const uint8_t*>(s.envelope.data());
  input.insert(input.end(), e, e + s.envelope.size());
  std::ofstream(dir / name, std::ios::binary)
      .write(reinterpret_cast<const char*>(input.data()), static_cast<std::streamsize>(input.size()));
}

int WriteSeeds(const fs::path& dir) {
  using zcstore::fuzz::FuzzModel;
  using zcstore::fuzz::Leaf;
  fs::create_directories(dir);
  WriteSeed(dir, "empty", FuzzModel{});
  FuzzModel m;
  m.name = "seed";
  m.ids = {1, 2, 3};
  m.params = {{"lr", 0.1}, {"decay", 0.9}};
  m.extra = Leaf{1, "extra"};
  m.choice = Leaf{2, "choice"};
  m.a = std::make_shared<Leaf>(Leaf{3, "shared"});
  m.b = m.a;
  m.owned = std::make_unique<Leaf>(Leaf{4, "owned"});
  m.leaves = {Leaf{5, "x"}, Leaf{6, "y"}};
  m.weights = {1.f, 2.f, 3.f};
  WriteSeed(dir, "small", m);
  m.weights = zcstore::Array<float>(2000);   // out of band
  m.history = std::vector<double>(1000, 0.5);  // out of band
  m.choice = std::string("text");
  WriteSeed(dir, "buffers", m);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--write-seeds") return WriteSeeds(argv[2]);
  size_t runs = 0;
  for (int i = 1; i < argc; ++i) {
    std::vector<fs::path> files;
    if (fs::is_directory(argv[i])) {
      for (auto& e : fs::directory_iterator(argv[i])) files.push_back(e.path());
    } else {
      files.emplace_back(argv[i]);
    }
    for (const fs::path& f : files) {
      std::ifstream in(f, std::ios::binary);
      std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
      // Every prefix too: truncation is the commonest damage.
      for (size_t cut = 0; cut < bytes.size(); cut += 7) LLVMFuzzerTestOneInput(bytes.data(), cut);
      ++runs;
    }
  }
  std::cout << "replayed " << runs << " inputs (and their prefixes) without a crash\n";
  return runs > 0 ? 0 : 1;
}
