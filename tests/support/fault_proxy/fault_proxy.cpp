// fault_proxy: a TCP proxy for tests that injects network faults between a client and a target.
//
//   fault_proxy --target HOST:PORT [--listen-host H] [--listen-port N] [--ready-file F]
//               [--control-file F] [--stats-file F] [KEY=VALUE...]
//
// --ready-file receives the listening port once it listens (so tests can use port 0);
// --stats-file is rewritten every 100 ms with up_bytes, down_bytes (forwarded payload bytes,
// client->target and back), accepted, open and resets (connections), and last_fault_unix_ms
// (wall-clock time the last stall, reset or half-open fired), and written_unix_ms (when this
// copy was written, so a reader can wait for one written after it asked).
//
// Keys (also accepted, one per line, in the control file, which is re-read whenever its
// content changes, so a test can change the link while traffic flows):
//   latency_up_ms, latency_down_ms   one-way delay added client->target / target->client
//   jitter_ms                        extra delay drawn uniformly from [0, jitter_ms] per read
//   rate_bps                         bandwidth cap per direction per connection [bit/s]; 0: none
//   stall_after_bytes + stall_s      after N more client->target bytes (counted over all
//                                    connections from when the key was set), forward nothing in
//                                    either direction for stall_s seconds (0: until changed)
//   reset_after_bytes                after N more client->target bytes, reset (RST) every open
//                                    connection, both sides
//   half_open=1                      the connections open now stop forwarding and reading but
//                                    keep their sockets open; new connections work normally
//   half_open_after_bytes            the same, after N more client->target bytes
//   refuse=1                         new connections are reset at once (the link is down)
// The fault triggers fire once; writing the key again (a changed file) re-arms them.
//
// Delay is real queueing: every block read is stamped with the time it may leave, so latency
// does not limit bandwidth. Events are logged to stderr. Exit with SIGTERM or SIGINT.
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kReadBlock = 64 * 1024;
// Bytes a direction may hold in flight; above this the proxy stops reading (back-pressure).
// Enough for 1 Gbit/s with 100 ms of added delay.
constexpr std::size_t kMaxQueued = 32u << 20;
constexpr std::uint64_t kNever = UINT64_MAX;

struct Settings {
  std::uint64_t latency_up_ms = 0;
  std::uint64_t latency_down_ms = 0;
  std::uint64_t jitter_ms = 0;
  std::uint64_t rate_bps = 0;
  std::uint64_t stall_s = 0;
  bool refuse = false;
};

struct Faults {
  std::uint64_t up_bytes = 0;          // client->target bytes forwarded, all connections
  std::uint64_t down_bytes = 0;
  std::uint64_t accepted = 0;
  std::uint64_t resets = 0;
  std::uint64_t stall_at = kNever;     // up_bytes at which the stall begins
  std::uint64_t reset_at = kNever;     // up_bytes at which every connection is reset
  std::uint64_t half_open_at = kNever; // up_bytes at which open connections go half-open
  std::int64_t last_fault_unix_ms = 0;
  bool stalled = false;
  bool stall_forever = false;
  Clock::time_point stall_until{};
};

class Connection;

struct Proxy {
  asio::io_context io;
  tcp::endpoint target;
  Settings settings;
  Faults faults;
  std::set<std::shared_ptr<Connection>> connections;
  std::mt19937_64 rng{std::random_device{}()};
  std::uint64_t next_id = 1;

  bool Stalled() {
    if (!faults.stalled) return false;
    if (!faults.stall_forever && Clock::now() >= faults.stall_until) {
      faults.stalled = false;
      std::cerr << "fault_proxy: stall ended" << std::endl;
      return false;
    }
    return true;
  }
  void ResetAll(const char* why);
  void HalfOpenAll(const char* why);
  void FaultFired() {
    faults.last_fault_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                    std::chrono::system_clock::now().time_since_epoch())
                                    .count();
  }
  void ApplyKey(const std::string& key, const std::string& value, bool* ok);
};

// One direction of a connection: reads from `from`, queues stamped blocks, writes to `to`.
struct Pipe {
  struct Block {
    Clock::time_point ready;
    std::vector<char> bytes;
    std::size_t sent = 0;
  };
  bool up = false;  // client->target
  std::deque<Block> queue;
  std::size_t queued = 0;
  bool reading = false;
  bool writing = false;
  bool eof = false;
  bool shut = false;
  Clock::time_point last_ready{};
  Clock::time_point next_send{};  // the rate cap's pacing clock
  std::vector<char> buffer = std::vector<char>(kReadBlock);
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Proxy& proxy, tcp::socket client)
      : proxy_(proxy),
        id_(proxy.next_id++),
        client_(std::move(client)),
        target_(proxy.io),
        up_timer_(proxy.io),
        down_timer_(proxy.io) {
    up_.up = true;
  }

  void Start() {
    auto self = shared_from_this();
    target_.async_connect(proxy_.target, [this, self](const boost::system::error_code& ec) {
      if (ec) {
        std::cerr << "fault_proxy: connection " << id_ << ": target refused: " << ec.message() << std::endl;
        Close(true);
        return;
      }
      boost::system::error_code ignored;
      target_.set_option(tcp::no_delay(true), ignored);
      client_.set_option(tcp::no_delay(true), ignored);
      Read(up_);
      Read(down_);
    });
  }

  // Abortive close (RST) when `reset`, else a plain close.
  void Close(bool reset) {
    if (closed_) return;
    closed_ = true;
    boost::system::error_code ignored;
    for (tcp::socket* s : {&client_, &target_}) {
      if (reset && s->is_open()) s->set_option(asio::socket_base::linger(true, 0), ignored);
      s->close(ignored);
    }
    up_timer_.cancel();
    down_timer_.cancel();
    proxy_.connections.erase(shared_from_this());
  }

  void MakeHalfOpen() {
    half_open_ = true;
    up_timer_.cancel();
    down_timer_.cancel();
  }
  bool half_open() const { return half_open_; }
  std::uint64_t id() const { return id_; }

 private:
  tcp::socket& From(Pipe& p) { return p.up ? client_ : target_; }
  tcp::socket& To(Pipe& p) { return p.up ? target_ : client_; }
  asio::steady_timer& Timer(Pipe& p) { return p.up ? up_timer_ : down_timer_; }

  void Read(Pipe& p) {
    if (closed_ || half_open_ || p.reading || p.eof || p.queued >= kMaxQueued) return;
    p.reading = true;
    auto self = shared_from_this();
    From(p).async_read_some(asio::buffer(p.buffer), [this, self, &p](const boost::system::error_code& ec, std::size_t n) {
      p.reading = false;
      if (closed_ || half_open_) return;
      if (ec) {
        if (ec != asio::error::eof) {
          // The peer reset or failed: pass that on as a reset.
          Close(true);
          return;
        }
        p.eof = true;
      } else {
        const Settings& s = proxy_.settings;
        std::uint64_t delay_ms = p.up ? s.latency_up_ms : s.latency_down_ms;
        if (s.jitter_ms > 0) delay_ms += std::uniform_int_distribution<std::uint64_t>(0, s.jitter_ms)(proxy_.rng);
        // Blocks leave in the order they came, whatever the jitter.
        const auto ready = std::max(Clock::now() + std::chrono::milliseconds(delay_ms), p.last_ready);
        p.last_ready = ready;
        p.queue.push_back({ready, std::vector<char>(p.buffer.begin(), p.buffer.begin() + static_cast<std::ptrdiff_t>(n)), 0});
        p.queued += n;
        Read(p);
      }
      Write(p);
    });
  }

  void Write(Pipe& p) {
    if (closed_ || half_open_ || p.writing) return;
    if (p.queue.empty()) {
      if (p.eof && !p.shut) {
        p.shut = true;
        boost::system::error_code ignored;
        To(p).shutdown(tcp::socket::shutdown_send, ignored);
        if (up_.shut && down_.shut) Close(false);
      }
      return;
    }
    const auto now = Clock::now();
    Clock::time_point when = std::max(p.queue.front().ready, p.next_send);
    if (proxy_.Stalled()) {
      when = proxy_.faults.stall_forever ? now + std::chrono::milliseconds(50) : proxy_.faults.stall_until;
    }
    if (when > now) {
      p.writing = true;
      Timer(p).expires_at(when);
      auto self = shared_from_this();
      Timer(p).async_wait([this, self, &p](const boost::system::error_code&) {
        p.writing = false;
        Write(p);
      });
      return;
    }
    Pipe::Block& b = p.queue.front();
    std::size_t n = b.bytes.size() - b.sent;
    const std::uint64_t rate = proxy_.settings.rate_bps;
    if (rate > 0) {
      // Pace in slices of about 2 ms of the link's capacity, so the cap is smooth.
      n = std::min<std::size_t>(n, std::max<std::size_t>(1460, static_cast<std::size_t>(rate / 8 / 500)));
    }
    Faults& f = proxy_.faults;
    if (p.up) {
      // Stop exactly at a trigger, so "after N bytes" means N bytes forwarded.
      for (std::uint64_t at : {f.stall_at, f.reset_at, f.half_open_at}) {
        if (at != kNever && at > f.up_bytes) n = std::min<std::size_t>(n, static_cast<std::size_t>(at - f.up_bytes));
      }
    }
    p.writing = true;
    auto self = shared_from_this();
    asio::async_write(To(p), asio::buffer(b.bytes.data() + b.sent, n),
                      [this, self, &p, rate](const boost::system::error_code& ec, std::size_t written) {
                        p.writing = false;
                        if (closed_ || half_open_) return;
                        if (ec) {
                          Close(true);
                          return;
                        }
                        Pipe::Block& front = p.queue.front();
                        front.sent += written;
                        p.queued -= written;
                        if (front.sent == front.bytes.size()) p.queue.pop_front();
                        if (rate > 0) {
                          const auto cost = std::chrono::nanoseconds(written * 8 * 1000000000ull / rate);
                          p.next_send = std::max(p.next_send, Clock::now() - std::chrono::milliseconds(2)) + cost;
                        }
                        if (!p.up) proxy_.faults.down_bytes += written;
                        if (p.up) {
                          Faults& fl = proxy_.faults;
                          fl.up_bytes += written;
                          if (fl.stall_at != kNever && fl.up_bytes >= fl.stall_at) {
                            fl.stall_at = kNever;
                            fl.stalled = true;
                            fl.stall_forever = proxy_.settings.stall_s == 0;
                            fl.stall_until = Clock::now() + std::chrono::seconds(proxy_.settings.stall_s);
                            proxy_.FaultFired();
                            std::cerr << "fault_proxy: stall began after " << fl.up_bytes << " bytes up" << std::endl;
                          }
                          if (fl.reset_at != kNever && fl.up_bytes >= fl.reset_at) {
                            fl.reset_at = kNever;
                            proxy_.ResetAll("reset_after_bytes reached");
                            return;
                          }
                          if (fl.half_open_at != kNever && fl.up_bytes >= fl.half_open_at) {
                            fl.half_open_at = kNever;
                            proxy_.HalfOpenAll("half_open_after_bytes reached");
                            return;
                          }
                        }
                        Read(p);
                        Write(p);
                      });
  }

  Proxy& proxy_;
  std::uint64_t id_;
  tcp::socket client_;
  tcp::socket target_;
  asio::steady_timer up_timer_;
  asio::steady_timer down_timer_;
  Pipe up_;
  Pipe down_;
  bool closed_ = false;
  bool half_open_ = false;
};

void Proxy::ResetAll(const char* why) {
  auto all = connections;  // Close() erases from the set
  std::size_t n = 0;
  for (const auto& c : all) {
    if (c->half_open()) continue;
    c->Close(true);
    ++n;
  }
  faults.resets += n;
  FaultFired();
  std::cerr << "fault_proxy: reset " << n << " connection(s): " << why << " (" << faults.up_bytes << " bytes up)"
            << std::endl;
}

void Proxy::HalfOpenAll(const char* why) {
  std::size_t n = 0;
  for (const auto& c : connections) {
    if (!c->half_open()) ++n;
    c->MakeHalfOpen();
  }
  FaultFired();
  std::cerr << "fault_proxy: " << n << " connection(s) made half-open: " << why << " (" << faults.up_bytes
            << " bytes up)" << std::endl;
}

void Proxy::ApplyKey(const std::string& key, const std::string& value, bool* ok) {
  std::uint64_t v = 0;
  try {
    std::size_t used = 0;
    v = std::stoull(value, &used);
    if (used != value.size()) throw std::invalid_argument(value);
  } catch (const std::exception&) {
    std::cerr << "fault_proxy: " << key << ": expected a non-negative integer, found \"" << value << "\"" << std::endl;
    *ok = false;
    return;
  }
  if (key == "latency_up_ms") settings.latency_up_ms = v;
  else if (key == "latency_down_ms") settings.latency_down_ms = v;
  else if (key == "jitter_ms") settings.jitter_ms = v;
  else if (key == "rate_bps") settings.rate_bps = v;
  else if (key == "stall_s") {
    settings.stall_s = v;
  } else if (key == "stall_after_bytes") {
    faults.stall_at = faults.up_bytes + v;
    faults.stalled = false;
  } else if (key == "reset_after_bytes") {
    faults.reset_at = faults.up_bytes + v;
  } else if (key == "refuse") {
    settings.refuse = v != 0;
  } else if (key == "half_open") {
    if (v != 0) HalfOpenAll("half_open=1");
  } else if (key == "half_open_after_bytes") {
    faults.half_open_at = faults.up_bytes + v;
  } else {
    std::cerr << "fault_proxy: unknown key \"" << key << "\"" << std::endl;
    *ok = false;
  }
}

bool ApplyText(Proxy& proxy, const std::string& text) {
  bool ok = true;
  std::istringstream in(text);
  std::string line;
  // Settings before triggers, so "stall_s" is known when the stall is armed.
  std::vector<std::pair<std::string, std::string>> triggers;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto eq = line.find('=');
    if (eq == std::string::npos) {
      std::cerr << "fault_proxy: control line without '=': \"" << line << "\"" << std::endl;
      ok = false;
      continue;
    }
    std::string key = line.substr(0, eq);
    std::string value = line.substr(eq + 1);
    if (key == "stall_after_bytes" || key == "reset_after_bytes" || key == "half_open" ||
        key == "half_open_after_bytes") {
      triggers.emplace_back(key, value);
    } else {
      proxy.ApplyKey(key, value, &ok);
    }
  }
  for (const auto& [k, v] : triggers) proxy.ApplyKey(k, v, &ok);
  return ok;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void Accept(Proxy& proxy, tcp::acceptor& acceptor) {
  acceptor.async_accept([&proxy, &acceptor](const boost::system::error_code& ec, tcp::socket socket) {
    if (!ec) {
      if (proxy.settings.refuse) {
        boost::system::error_code ignored;
        socket.set_option(asio::socket_base::linger(true, 0), ignored);
        socket.close(ignored);
      } else {
        ++proxy.faults.accepted;
        auto c = std::make_shared<Connection>(proxy, std::move(socket));
        proxy.connections.insert(c);
        c->Start();
      }
    }
    Accept(proxy, acceptor);
  });
}

void WatchControl(Proxy& proxy, asio::steady_timer& timer, const std::string& path, std::string& last) {
  timer.expires_after(std::chrono::milliseconds(20));
  timer.async_wait([&proxy, &timer, &path, &last](const boost::system::error_code& ec) {
    if (ec) return;
    std::string text = ReadFile(path);
    if (!text.empty() && text != last) {
      last = text;
      ApplyText(proxy, text);
      std::cerr << "fault_proxy: control file applied" << std::endl;
    }
    WatchControl(proxy, timer, path, last);
  });
}

void WriteStats(Proxy& proxy, asio::steady_timer& timer, const std::string& path) {
  timer.expires_after(std::chrono::milliseconds(100));
  timer.async_wait([&proxy, &timer, &path](const boost::system::error_code& ec) {
    if (ec) return;
    const std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp);
      out << "up_bytes=" << proxy.faults.up_bytes << "\ndown_bytes=" << proxy.faults.down_bytes
          << "\naccepted=" << proxy.faults.accepted << "\nopen=" << proxy.connections.size()
          << "\nresets=" << proxy.faults.resets << "\nlast_fault_unix_ms=" << proxy.faults.last_fault_unix_ms
          << "\nwritten_unix_ms="
          << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
                 .count()
          << "\n";
    }
    std::rename(tmp.c_str(), path.c_str());
    WriteStats(proxy, timer, path);
  });
}

int Usage(const std::string& problem) {
  std::cerr << "fault_proxy: " << problem
            << "\nusage: fault_proxy --target HOST:PORT [--listen-port N] [--listen-host H] [--ready-file F]"
               " [--control-file F] [--stats-file F] [KEY=VALUE...]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Proxy proxy;
  std::string target;
  std::string listen_host = "127.0.0.1";
  std::uint16_t listen_port = 0;
  std::string ready_file;
  std::string control_file;
  std::string stats_file;
  std::string initial;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : std::string(); };
    if (a == "--target") target = next();
    else if (a == "--listen-host") listen_host = next();
    else if (a == "--listen-port") listen_port = static_cast<std::uint16_t>(std::stoul(next()));
    else if (a == "--ready-file") ready_file = next();
    else if (a == "--control-file") control_file = next();
    else if (a == "--stats-file") stats_file = next();
    else if (a.find('=') != std::string::npos) initial += a + "\n";
    else return Usage("unknown argument " + a);
  }
  const auto colon = target.rfind(':');
  if (colon == std::string::npos) return Usage("--target HOST:PORT is required");
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(target.substr(0, colon), ec);
  if (ec) return Usage("--target: \"" + target.substr(0, colon) + "\" is not an IP address");
  proxy.target = tcp::endpoint(address, static_cast<std::uint16_t>(std::stoul(target.substr(colon + 1))));
  if (!ApplyText(proxy, initial)) return 2;

  tcp::acceptor acceptor(proxy.io);
  const auto listen_address = asio::ip::make_address(listen_host, ec);
  if (ec) return Usage("--listen-host: \"" + listen_host + "\" is not an IP address");
  const tcp::endpoint endpoint(listen_address, listen_port);
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    std::cerr << "fault_proxy: cannot listen on " << listen_host << ":" << listen_port << ": " << ec.message() << std::endl;
    return 1;
  }
  const auto port = acceptor.local_endpoint().port();
  std::cerr << "fault_proxy: listening on " << listen_host << ":" << port << ", forwarding to " << target << std::endl;
  if (!ready_file.empty()) {
    // Written whole under a temporary name, so a reader never sees a partial port number.
    const std::string tmp = ready_file + ".tmp";
    std::ofstream(tmp) << port;
    std::rename(tmp.c_str(), ready_file.c_str());
  }
  Accept(proxy, acceptor);

  asio::steady_timer control_timer(proxy.io);
  std::string last_control;
  if (!control_file.empty()) WatchControl(proxy, control_timer, control_file, last_control);

  asio::steady_timer stats_timer(proxy.io);
  if (!stats_file.empty()) WriteStats(proxy, stats_timer, stats_file);

  asio::signal_set signals(proxy.io, SIGTERM, SIGINT);
  signals.async_wait([&proxy](const boost::system::error_code&, int) { proxy.io.stop(); });
  proxy.io.run();
  return 0;
}
