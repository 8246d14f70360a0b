// Process groups for distributed training and serving, on MPI (Open MPI from Debian; STYLE §9).
// A thin layer: the collectives dsv3 uses, typed, with sizes in elements, over an MPI
// communicator. A build without MPI, or a process not started by mpirun, sees one rank and
// every collective is the identity, so single-process code paths need no special case.
//
// One thread at a time calls MPI (MPI is initialised MPI_THREAD_SERIALIZED): the main thread
// in training; in `dsv3 serve --ep` rank 0's engine loop thread (the main thread makes no
// MPI call between starting that thread and joining it). Pool workers (core/parallel.h) never do.
//
// Failure: a rank that throws, or dies, must not leave the others waiting in a collective.
// fatal() prints and calls MPI_Abort, which makes mpirun terminate every rank; a rank killed
// by a signal is caught by mpirun the same way (its default: abort the job when one process
// exits abnormally). main() routes errors through fatal() whenever the world has > 1 rank.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"

namespace dsv3::dist {

// True when this binary was built with MPI.
bool mpi_built();
// True when this process was started by an MPI launcher (mpirun/mpiexec sets the size in the
// environment); checked without initialising MPI.
bool launched_by_mpi();

// Initialises MPI on first use when launched by mpirun (idempotent); finalize() at exit.
void init();
void finalize();
// True between init() (under mpirun) and finalize().
bool active();
// True when MPI granted MPI_THREAD_SERIALIZED or more (or is not active): a thread other than
// the one that initialised MPI may then call it, one thread at a time.
bool thread_serialized();
// An error every rank raises at the same point, from the same inputs (a refused layout):
// each rank prints it and leaves MPI in order (exit 1), so every rank's message is seen;
// fatal() would end the job at the first one.
struct CollectiveError : Error {
  using Error::Error;
};
// Prints "dsv3: error: [rank r] msg" and ends the whole job with exit code `code` (MPI_Abort
// when distributed; std::exit otherwise).
[[noreturn]] void fatal(const std::string& msg, int code = 1);

// A non-blocking operation in flight; wait() completes it (idempotent). test() progresses it
// and says whether it is done: call it between pieces of computation so a collective runs
// while the CPU computes (MPI progresses non-blocking operations only inside MPI calls).
class Request {
 public:
  Request();
  Request(Request&&) noexcept;
  Request& operator=(Request&&) noexcept;
  ~Request();  // waits
  bool test();
  void wait();
  bool active() const;
  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  friend class Comm;
};

enum class Elem { F32, F64, I32, I64, U8 };
template <class T> constexpr Elem elem_of();
template <> constexpr Elem elem_of<float>() { return Elem::F32; }
template <> constexpr Elem elem_of<double>() { return Elem::F64; }
template <> constexpr Elem elem_of<int32_t>() { return Elem::I32; }
template <> constexpr Elem elem_of<int64_t>() { return Elem::I64; }
template <> constexpr Elem elem_of<uint8_t>() { return Elem::U8; }

// Bytes sent by this process through a Comm (all communicators), for the traffic figures.
struct Traffic {
  int64_t bytes_sent = 0;
  int64_t messages = 0;
};
Traffic& traffic();

class Comm {
 public:
  // The world: all ranks of the job (one, when not under mpirun).
  static Comm& world();
  Comm();  // a one-rank group
  Comm(Comm&&) noexcept;
  Comm& operator=(Comm&&) noexcept;
  ~Comm();

  int rank() const { return rank_; }
  int size() const { return size_; }
  // The sub-group of ranks with the same color, ordered by key (MPI_Comm_split).
  Comm split(int color, int key) const;

  void barrier() const;
  // Sum over ranks, in place (every rank gets the result). The order of the additions is
  // MPI's, the same on every rank of the group.
  template <class T> void allreduce_sum(T* data, int64_t n) const { allreduce(data, n, elem_of<T>(), 0); }
  template <class T> void allreduce_max(T* data, int64_t n) const { allreduce(data, n, elem_of<T>(), 1); }
  // allreduce_sum, non-blocking (MPI_Iallreduce): data must live until the request completes.
  template <class T> Request iallreduce_sum(T* data, int64_t n) const { return iallreduce(data, n, elem_of<T>()); }
  // buf [Σ counts]: block r (at offset Σ_{q<r} counts[q]) comes from rank r; in place.
  template <class T> void allgather(T* buf, const std::vector<int64_t>& counts) const {
    allgatherv(buf, counts, int64_t(sizeof(T)));
  }
  // Root's data [n] to every rank, in place. ibcast: non-blocking (a waiting rank can poll
  // test() and sleep between polls instead of spinning in MPI).
  template <class T> void bcast(T* data, int64_t n, int root) const { ibcast(data, n, root).wait(); }
  template <class T> Request ibcast(T* data, int64_t n, int root) const {
    return ibcast_bytes(data, n, int64_t(sizeof(T)), root);
  }
  // Root receives every rank's `mine` [counts[rank]] into buf [Σ counts] (block r at offset
  // Σ_{q<r} counts[q]); buf is used on the root only.
  template <class T> void gather(const T* mine, T* buf, const std::vector<int64_t>& counts, int root) const {
    gatherv(mine, buf, counts, int64_t(sizeof(T)), root);
  }
  // All-to-all of variable-size blocks of elements of elem_bytes bytes each: send block r
  // (sdispl[r], scount[r]) to rank r; receive rank r's block into (rdispl[r], rcount[r]).
  // Counts and displacements are in elements (each must fit MPI's int). Non-blocking
  // (MPI_Ialltoallv).
  Request ialltoallv(const void* send, const std::vector<int64_t>& scount,
                     const std::vector<int64_t>& sdispl, void* recv,
                     const std::vector<int64_t>& rcount, const std::vector<int64_t>& rdispl,
                     int64_t elem_bytes = 1) const;
  // Point to point (pipeline): bytes with a tag.
  Request isend(const void* data, int64_t bytes, int dest, int tag) const;
  Request irecv(void* data, int64_t bytes, int src, int tag) const;
  void send(const void* data, int64_t bytes, int dest, int tag) const { isend(data, bytes, dest, tag).wait(); }
  void recv(void* data, int64_t bytes, int src, int tag) const { irecv(data, bytes, src, tag).wait(); }

  struct Impl;

 private:
  void allreduce(void* data, int64_t n, Elem e, int op) const;
  Request iallreduce(void* data, int64_t n, Elem e) const;
  void allgatherv(void* buf, const std::vector<int64_t>& counts, int64_t elem_bytes) const;
  Request ibcast_bytes(void* data, int64_t n, int64_t elem_bytes, int root) const;
  void gatherv(const void* mine, void* buf, const std::vector<int64_t>& counts, int64_t elem_bytes,
               int root) const;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0, size_ = 1;
};

// Artificial network latency for experiments (DSV3_COMM_DELAY_US): added, as a sleep, to the
// completion of every non-blocking transfer and every blocking collective; 0 when unset.
int64_t comm_delay_us();

}  // namespace dsv3::dist
