// Starts `tessera serve` on a free loopback port for a test and stops it after.
#pragma once
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

extern char** environ;

namespace tessera::test {

class ServerProcess {
 public:
  // args: the serve options (model, sizes); --port 0 is added. Waits until the
  // model is loaded ("ready" on stderr); port() is 0 if it never got there.
  // wait_ready false: return as soon as the port is bound (the model may still be loading).
  explicit ServerProcess(const std::vector<std::string>& args, double timeout_s = 60, bool wait_ready = true) {
    static int counter = 0;
    log_ = temp_path("serve_" + std::to_string(++counter) + ".log");
    std::vector<std::string> argv = {TESSERA_CLI, "serve", "--port", "0"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (posix_spawn(&pid_, TESSERA_CLI, &fa, nullptr, cargv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
    const auto t0 = std::chrono::steady_clock::now();
    const std::regex re("listening on http://[^:]+:([0-9]+)");
    while (pid_ > 0 && std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < timeout_s) {
      const std::string s = log();
      std::smatch m;
      if (std::regex_search(s, m, re)) listen_port_ = std::stoi(m[1]);
      if (!wait_ready && listen_port_ > 0) break;
      if (s.find("tessera: ready") != std::string::npos) {
        port_ = listen_port_;
        break;
      }
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        exited_ = true, status_ = st;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ~ServerProcess() {
    stop();
    std::remove(log_.c_str());
  }
  int port() const { return port_; }
  int listen_port() const { return listen_port_; }  // bound, model possibly still loading
  pid_t pid() const { return pid_; }
  std::string log() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  // SIGTERM and wait; the exit code (128 + signal when killed).
  int stop() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGTERM);
      int st = 0;
      for (int i = 0; i < 500; ++i) {
        if (waitpid(pid_, &st, WNOHANG) == pid_) {
          exited_ = true, status_ = st;
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      if (!exited_) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &st, 0);
        exited_ = true, status_ = st;
      }
    }
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
  }
  // Resident memory of the server process in KiB (/proc/PID/status VmRSS).
  long rss_kib() const {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    return -1;
  }

 private:
  std::string log_;
  pid_t pid_ = -1;
  int port_ = 0, listen_port_ = 0;
  bool exited_ = false;
  int status_ = 0;
};

}  // namespace tessera::test
