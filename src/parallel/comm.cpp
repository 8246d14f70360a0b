#include "parallel/comm.h"

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "core/check.h"

#ifdef DSV3_HAVE_MPI
// The C API only: the MPI-2 C++ bindings are deprecated and need their own library.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace dsv3::dist {
namespace {

using Clock = std::chrono::steady_clock;

bool g_inited = false;
int g_thread_level = 0;  // MPI's `provided` (MPI_THREAD_SINGLE = 0)

int64_t read_delay() {
  const char* s = std::getenv("DSV3_COMM_DELAY_US");
  if (s == nullptr || *s == 0) return 0;
  char* end = nullptr;
  const long long v = std::strtoll(s, &end, 10);
  DSV3_CHECK(end != s && *end == 0 && v >= 0, "DSV3_COMM_DELAY_US='", s,
             "' is not a non-negative integer (microseconds)");
  return v;
}

[[maybe_unused]] void sleep_delay() {
  const int64_t d = comm_delay_us();
  if (d > 0) std::this_thread::sleep_for(std::chrono::microseconds(d));
}

#ifdef DSV3_HAVE_MPI
MPI_Datatype mpi_type(Elem e) {
  switch (e) {
    case Elem::F32: return MPI_FLOAT;
    case Elem::F64: return MPI_DOUBLE;
    case Elem::I32: return MPI_INT32_T;
    case Elem::I64: return MPI_INT64_T;
    case Elem::U8: return MPI_UINT8_T;
  }
  return MPI_BYTE;
}
int64_t elem_bytes(Elem e) {
  switch (e) {
    case Elem::F32: case Elem::I32: return 4;
    case Elem::F64: case Elem::I64: return 8;
    case Elem::U8: return 1;
  }
  return 1;
}

// MPI counts and displacements are int, in units of the datatype: large transfers go as
// elements of their size (a contiguous type), so a 1.4B-parameter arena's displacements
// (1.4G floats) fit where its byte offsets would not.
int as_count(int64_t n, const char* what) {
  DSV3_CHECK(n >= 0 && n <= INT_MAX, what, ": a count or displacement of ", n,
             " elements exceeds MPI's int range");
  return int(n);
}

// A committed contiguous datatype of `bytes` bytes (cached: a handful of sizes per run).
MPI_Datatype elem_type(int64_t bytes) {
  static std::vector<std::pair<int64_t, MPI_Datatype>> cache;
  if (bytes == 1) return MPI_BYTE;
  for (const auto& [b, t] : cache)
    if (b == bytes) return t;
  MPI_Datatype t;
  MPI_Type_contiguous(as_count(bytes, "element size"), MPI_BYTE, &t);
  MPI_Type_commit(&t);
  cache.push_back({bytes, t});
  return t;
}

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fatal(std::string(what) + " failed: " + std::string(msg, size_t(len)));
}

std::vector<int> to_int(const std::vector<int64_t>& v, const char* what) {
  std::vector<int> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = as_count(v[i], what);
  return r;
}
std::vector<int> displs_of(const std::vector<int64_t>& counts, const char* what) {
  std::vector<int> d(counts.size());
  int64_t o = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    d[i] = as_count(o, what);
    o += counts[i];
  }
  return d;
}
#endif

}  // namespace

bool mpi_built() {
#ifdef DSV3_HAVE_MPI
  return true;
#else
  return false;
#endif
}

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

int64_t comm_delay_us() {
  static const int64_t d = read_delay();
  return d;
}

Traffic& traffic() {
  static Traffic t;
  return t;
}

// ---- Request ----------------------------------------------------------------------------

struct Request::Impl {
#ifdef DSV3_HAVE_MPI
  MPI_Request req = MPI_REQUEST_NULL;
#endif
  Clock::time_point ready;  // the injected delay ends here
  bool done = true;
  std::vector<int> counts;  // kept alive for MPI_Ialltoallv (it reads them until completion)
};

Request::Request() : impl_(std::make_unique<Impl>()) {}
Request::Request(Request&&) noexcept = default;
Request& Request::operator=(Request&& o) noexcept {
  if (this != &o) {
    wait();
    impl_ = std::move(o.impl_);
  }
  return *this;
}
Request::~Request() { wait(); }
bool Request::active() const { return impl_ && !impl_->done; }

bool Request::test() {
  if (!active()) return true;
  if (Clock::now() < impl_->ready) {
#ifdef DSV3_HAVE_MPI
    int flag = 0;  // progress the transfer even while the injected latency runs
    if (impl_->req != MPI_REQUEST_NULL) check_mpi(MPI_Test(&impl_->req, &flag, MPI_STATUS_IGNORE), "MPI_Test");
#endif
    return false;
  }
#ifdef DSV3_HAVE_MPI
  int flag = 1;
  if (impl_->req != MPI_REQUEST_NULL) check_mpi(MPI_Test(&impl_->req, &flag, MPI_STATUS_IGNORE), "MPI_Test");
  if (!flag) return false;
#endif
  impl_->done = true;
  return true;
}

void Request::wait() {
  if (!active()) return;
  std::this_thread::sleep_until(impl_->ready);
#ifdef DSV3_HAVE_MPI
  if (impl_->req != MPI_REQUEST_NULL) check_mpi(MPI_Wait(&impl_->req, MPI_STATUS_IGNORE), "MPI_Wait");
#endif
  impl_->done = true;
}

// ---- Comm -------------------------------------------------------------------------------

struct Comm::Impl {
#ifdef DSV3_HAVE_MPI
  MPI_Comm comm = MPI_COMM_NULL;
  bool owned = false;
  ~Impl() {
    if (owned && comm != MPI_COMM_NULL && g_inited) MPI_Comm_free(&comm);
  }
#endif
};

void init() {
  if (g_inited) return;
#ifdef DSV3_HAVE_MPI
  if (!launched_by_mpi()) return;
  int flag = 0;
  MPI_Initialized(&flag);
  if (!flag) {
    int provided = 0;
    DSV3_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided) == MPI_SUCCESS,
               "MPI_Init_thread failed");
    DSV3_CHECK(provided >= MPI_THREAD_FUNNELED, "this MPI library provides thread level ", provided,
               "; dsv3 needs MPI_THREAD_FUNNELED (", MPI_THREAD_FUNNELED, ")");
    g_thread_level = provided;
  } else {
    MPI_Query_thread(&g_thread_level);
  }
  // Errors come back as return codes, which check_mpi turns into fatal() (every rank ends).
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  g_inited = true;
#endif
}

bool active() { return g_inited; }

bool thread_serialized() {
#ifdef DSV3_HAVE_MPI
  return !g_inited || g_thread_level >= MPI_THREAD_SERIALIZED;
#else
  return true;
#endif
}

void finalize() {
#ifdef DSV3_HAVE_MPI
  if (!g_inited) return;
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) MPI_Finalize();
  g_inited = false;
#endif
}

void fatal(const std::string& msg, int code) {
  const Comm& w = Comm::world();
  if (w.size() > 1) std::fprintf(stderr, "dsv3: error: [rank %d] %s\n", w.rank(), msg.c_str());
  else std::fprintf(stderr, "dsv3: error: %s\n", msg.c_str());
  std::fflush(stderr);
#ifdef DSV3_HAVE_MPI
  if (g_inited) MPI_Abort(MPI_COMM_WORLD, code);
#endif
  std::exit(code);
}

Comm::Comm() : impl_(std::make_unique<Impl>()) {}
Comm::Comm(Comm&&) noexcept = default;
Comm& Comm::operator=(Comm&&) noexcept = default;
Comm::~Comm() = default;

Comm& Comm::world() {
  static Comm w = [] {
    init();
    Comm c;
#ifdef DSV3_HAVE_MPI
    if (g_inited) {
      c.impl_->comm = MPI_COMM_WORLD;
      MPI_Comm_rank(MPI_COMM_WORLD, &c.rank_);
      MPI_Comm_size(MPI_COMM_WORLD, &c.size_);
    }
#endif
    return c;
  }();
  return w;
}

Comm Comm::split(int color, int key) const {
  Comm c;
#ifdef DSV3_HAVE_MPI
  if (size_ > 1) {
    check_mpi(MPI_Comm_split(impl_->comm, color, key, &c.impl_->comm), "MPI_Comm_split");
    c.impl_->owned = true;
    MPI_Comm_set_errhandler(c.impl_->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c.impl_->comm, &c.rank_);
    MPI_Comm_size(c.impl_->comm, &c.size_);
  }
#endif
  return c;
}

void Comm::barrier() const {
#ifdef DSV3_HAVE_MPI
  if (size_ > 1) check_mpi(MPI_Barrier(impl_->comm), "MPI_Barrier");
#endif
}

void Comm::allreduce(void* data, int64_t n, Elem e, int op) const {
  if (size_ == 1 || n == 0) return;
#ifdef DSV3_HAVE_MPI
  sleep_delay();
  traffic().bytes_sent += n * elem_bytes(e);  // the payload, whatever MPI's algorithm moves
  traffic().messages += 1;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, data, as_count(n, "MPI_Allreduce"), mpi_type(e), op == 0 ? MPI_SUM : MPI_MAX,
                          impl_->comm), "MPI_Allreduce");
#endif
}

Request Comm::iallreduce(void* data, int64_t n, Elem e) const {
  Request r;
  if (size_ == 1 || n == 0) return r;
#ifdef DSV3_HAVE_MPI
  traffic().bytes_sent += n * elem_bytes(e);  // the payload, as allreduce counts it
  traffic().messages += 1;
  r.impl_->ready = Clock::now() + std::chrono::microseconds(comm_delay_us());
  r.impl_->done = false;
  check_mpi(MPI_Iallreduce(MPI_IN_PLACE, data, as_count(n, "MPI_Iallreduce"), mpi_type(e), MPI_SUM, impl_->comm,
                           &r.impl_->req), "MPI_Iallreduce");
#endif
  return r;
}

void Comm::allgatherv(void* buf, const std::vector<int64_t>& counts, int64_t eb) const {
  DSV3_ASSERT(int(counts.size()) == size_);
  if (size_ == 1) return;
#ifdef DSV3_HAVE_MPI
  sleep_delay();
  traffic().bytes_sent += counts[size_t(rank_)] * eb * (size_ - 1);
  traffic().messages += 1;
  const std::vector<int> rc = to_int(counts, "MPI_Allgatherv"), rd = displs_of(counts, "MPI_Allgatherv");
  check_mpi(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, rc.data(), rd.data(), elem_type(eb),
                           impl_->comm), "MPI_Allgatherv");
#endif
}

Request Comm::ibcast_bytes(void* data, int64_t n, int64_t eb, int root) const {
  Request r;
  if (size_ == 1 || n == 0) return r;
#ifdef DSV3_HAVE_MPI
  if (rank_ == root) traffic().bytes_sent += n * eb * (size_ - 1), traffic().messages += 1;
  r.impl_->ready = Clock::now() + std::chrono::microseconds(comm_delay_us());
  r.impl_->done = false;
  check_mpi(MPI_Ibcast(data, as_count(n, "MPI_Ibcast"), elem_type(eb), root, impl_->comm, &r.impl_->req),
            "MPI_Ibcast");
#endif
  return r;
}

void Comm::gatherv(const void* mine, void* buf, const std::vector<int64_t>& counts, int64_t eb,
                   int root) const {
  DSV3_ASSERT(int(counts.size()) == size_);
  if (size_ == 1) {
    if (counts[0] > 0 && mine != buf) std::memcpy(buf, mine, size_t(counts[0] * eb));
    return;
  }
#ifdef DSV3_HAVE_MPI
  sleep_delay();
  const std::vector<int> rc = to_int(counts, "MPI_Gatherv"), rd = displs_of(counts, "MPI_Gatherv");
  const MPI_Datatype t = elem_type(eb);
  if (rank_ == root) {
    char* own = static_cast<char*>(buf) + int64_t(rd[size_t(rank_)]) * eb;
    if (counts[size_t(rank_)] > 0 && mine != own) std::memcpy(own, mine, size_t(counts[size_t(rank_)] * eb));
    check_mpi(MPI_Gatherv(MPI_IN_PLACE, 0, t, buf, rc.data(), rd.data(), t, root, impl_->comm), "MPI_Gatherv");
  } else {
    traffic().bytes_sent += counts[size_t(rank_)] * eb;
    traffic().messages += 1;
    check_mpi(MPI_Gatherv(mine, rc[size_t(rank_)], t, nullptr, nullptr, nullptr, t, root, impl_->comm),
              "MPI_Gatherv");
  }
#endif
}

Request Comm::ialltoallv(const void* send, const std::vector<int64_t>& scount,
                         const std::vector<int64_t>& sdispl, void* recv,
                         const std::vector<int64_t>& rcount, const std::vector<int64_t>& rdispl,
                         int64_t eb) const {
  DSV3_ASSERT(int(scount.size()) == size_ && int(rcount.size()) == size_);
  Request r;
  if (size_ == 1) {
    if (scount[0] > 0)
      std::memmove(static_cast<char*>(recv) + rdispl[0] * eb, static_cast<const char*>(send) + sdispl[0] * eb,
                   size_t(scount[0] * eb));
    return r;
  }
#ifdef DSV3_HAVE_MPI
  for (int q = 0; q < size_; ++q)
    if (q != rank_ && scount[size_t(q)] > 0) traffic().bytes_sent += scount[size_t(q)] * eb, traffic().messages += 1;
  r.impl_->counts.resize(size_t(4 * size_));
  int* c = r.impl_->counts.data();
  for (int q = 0; q < size_; ++q) {
    c[q] = as_count(scount[size_t(q)], "MPI_Ialltoallv");
    c[size_ + q] = as_count(sdispl[size_t(q)], "MPI_Ialltoallv");
    c[2 * size_ + q] = as_count(rcount[size_t(q)], "MPI_Ialltoallv");
    c[3 * size_ + q] = as_count(rdispl[size_t(q)], "MPI_Ialltoallv");
  }
  r.impl_->ready = Clock::now() + std::chrono::microseconds(comm_delay_us());
  r.impl_->done = false;
  const MPI_Datatype t = elem_type(eb);
  check_mpi(MPI_Ialltoallv(send, c, c + size_, t, recv, c + 2 * size_, c + 3 * size_, t, impl_->comm,
                           &r.impl_->req), "MPI_Ialltoallv");
#endif
  return r;
}

Request Comm::isend(const void* data, int64_t bytes, int dest, int tag) const {
  Request r;
#ifdef DSV3_HAVE_MPI
  DSV3_ASSERT(size_ > 1 && dest != rank_);
  traffic().bytes_sent += bytes;
  traffic().messages += 1;
  r.impl_->ready = Clock::now() + std::chrono::microseconds(comm_delay_us());
  r.impl_->done = false;
  check_mpi(MPI_Isend(data, as_count(bytes, "MPI_Isend"), MPI_BYTE, dest, tag, impl_->comm, &r.impl_->req), "MPI_Isend");
#else
  DSV3_FAIL("point-to-point send without MPI (dest ", dest, ", tag ", tag, ")");
#endif
  return r;
}

Request Comm::irecv(void* data, int64_t bytes, int src, int tag) const {
  Request r;
#ifdef DSV3_HAVE_MPI
  DSV3_ASSERT(size_ > 1 && src != rank_);
  r.impl_->ready = Clock::now() + std::chrono::microseconds(comm_delay_us());
  r.impl_->done = false;
  check_mpi(MPI_Irecv(data, as_count(bytes, "MPI_Irecv"), MPI_BYTE, src, tag, impl_->comm, &r.impl_->req), "MPI_Irecv");
#else
  DSV3_FAIL("point-to-point receive without MPI (src ", src, ", tag ", tag, ")");
#endif
  return r;
}

}  // namespace dsv3::dist
