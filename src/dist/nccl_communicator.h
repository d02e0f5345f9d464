#pragma once
// GPU collectives over NCCL: a Communicator (dist/communicator.h) whose every buffer argument is
// a pointer into CUDA device memory, for data-parallel and tensor-parallel training on the CUDA
// backend. Built when CMake finds CUDA and NCCL (src/dist/nccl_communicator.cpp); otherwise
// src/dist/no_nccl.cpp, whose make_nccl_communicator says this build has none.
//
// One GPU per process: the communicator uses the process's current CUDA device at creation
// (cudaSetDevice before, e.g. to the local rank), and every later call must run with that device
// current. NCCL refuses two ranks on one GPU.
//
// Ordering: every collective is issued on the legacy default stream (stream 0), the stream of
// every lmforge CUDA op, so it runs after the kernels that produced its input and before those
// that read its output, with no extra synchronisation. The blocking collectives (all_reduce_sum,
// reduce_scatter_sum, all_gather, broadcast, barrier) also wait on the host until stream 0 has
// drained (their result, and all work queued before them, is complete); start_all_reduce_sum and
// start_all_gather only queue theirs, and finish_all() waits for stream 0.
//
// Timeouts and failures as for MpiCommunicator: every wait (initialisation and split included)
// polls the device and NCCL's asynchronous error state against timeout_s; past it, or when NCCL
// reports a peer failure, the rank prints one line naming itself and the collective, aborts its
// NCCL communicator and ends the whole job through the host communicator (exit code 3). A call
// that NCCL rejects outright (a bad argument) throws lmf::Error naming the call.
//
// Payload bytes are counted in CommStats exactly as LocalCommunicator and MpiCommunicator count
// them (this rank's input size per call), so the same cost model checks a GPU run.
#include <memory>

#include "dist/communicator.h"

namespace lmf::dist {

// The NCCL communicator over the ranks of `host`, on this process's current CUDA device.
// host: the job's host communicator (MPI, or local for one process) over the same ranks; it
// carries NCCL's unique id (rank 0 creates it, host.broadcast sends it), and abort() goes through
// it. It must outlive the returned communicator and every communicator split from it.
// timeout_s bounds every wait, as for the host communicator ([dist] timeout_s).
// Collective over host. Throws UserError in a build without NCCL.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& host, double timeout_s);

// True when this build has NCCL (make_nccl_communicator can work, given a CUDA device).
bool nccl_built();

}  // namespace lmf::dist
