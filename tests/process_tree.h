// Who descends from a process, read from /proc: for the tests and
// benchmarks that check a process tree is gone. Header-only, so the
// benchmarks use it without linking the test support library.
#ifndef ZCSTORE_TESTS_PROCESS_TREE_H_
#define ZCSTORE_TESTS_PROCESS_TREE_H_

#include <sys/types.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace zcstore::testing {

// Every descendant of `root` that has not exited (from /proc's parent links;
// zombies, which have, are left out).
inline std::vector<pid_t> DescendantsOf(pid_t root) {
  std::vector<std::pair<pid_t, pid_t>> links;  // (pid, ppid)
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(e.path() / "stat");
    std::string line;
    if (!std::getline(in, line)) continue;
    size_t close = line.rfind(')');
    if (close == std::string::npos || close + 4 >= line.size()) continue;
    if (line[close + 2] == 'Z') continue;
    links.emplace_back(std::atoi(name.c_str()), std::atoi(line.c_str() + close + 4));
  }
  std::set<pid_t> tree = {root};
  std::vector<pid_t> out;
  for (bool grew = true; grew;) {
    grew = false;
    for (auto [pid, ppid] : links) {
      if (tree.count(ppid) && !tree.count(pid)) {
        tree.insert(pid);
        out.push_back(pid);
        grew = true;
      }
    }
  }
  return out;
}

}  // namespace zcstore::testing

#endif  // ZCSTORE_TESTS_PROCESS_TREE_H_
