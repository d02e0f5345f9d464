#pragma once
// The training loop: data, model, optimizer, schedule, evaluation, checkpoints, metrics,
// progress, and clean stops on SIGINT/SIGTERM. Re-running on a run directory that holds a
// checkpoint resumes from it exactly (same losses, bit for bit, on CPU).
#include <filesystem>
#include <functional>
#include <memory>

#include "data/loader.h"
#include "data/mixture.h"
#include "dist/communicator.h"
#include "model/model.h"
#include "train/config.h"
#include "train/data_parallel.h"

namespace lmf {

struct TrainSummary {
  long start_step = 0;     // step the run started (or resumed) from
  long end_step = 0;       // steps completed
  double last_train_loss = 0;
  double last_val_loss = 0;
  bool interrupted = false;
};

class Trainer {
 public:
  // Validates everything it can (config, data, vocabulary, an existing checkpoint) before it
  // writes anything. Started by mpirun/srun, every rank constructs one. The ranks form a grid:
  // groups of [dist] tensor_parallel consecutive ranks each hold one copy of the model, split
  // among them; the groups train on disjoint data and synchronise gradients ([dist] zero);
  // rank 0 writes the run's files.
  // backend: runs the model on this backend instead of [train] device's (tests use it to run the
  // device path on a stand-in, tests/guarded_backend.h).
  explicit Trainer(RunConfig cfg, const ops::Backend<float>* backend = nullptr);
  ~Trainer();
  // Trains to [train] steps; with stop_at > 0, stops after that step (checkpoint written), as a
  // preemptible job would, so that a later run resumes from there.
  TrainSummary run(long stop_at = 0);
  // Mean loss over the first eval_batches batches of the validation split (over all ranks).
  double evaluate();
  const dist::Communicator& comm() const { return *comm_; }
  Model& model() { return *model_; }
  const RunConfig& config() const { return cfg_; }

 private:
  void save_checkpoint(long step);
  // Fills the whole model with `fill`, then keeps this rank's part (tensor parallelism); or
  // fills the model directly.
  void load_whole(const std::function<void(Model&)>& fill);
  uint64_t comm_bytes_total() const;
  uint64_t comm_calls_total() const;

  RunConfig cfg_;
  std::filesystem::path run_dir_;
  std::unique_ptr<data::DataLoader> train_, val_;
  std::unique_ptr<data::MixtureLoader> mixture_;  // instead of train_ when [data] mixture is set
  std::unique_ptr<dist::Communicator> comm_;  // every rank
  // Declared after comm_, so destroyed before it: the tensor-parallel group, and the
  // data-parallel group when it is not the whole world (dp_comm_ points to one of them).
  std::unique_ptr<dist::Communicator> tp_comm_, dp_split_;
  std::unique_ptr<dist::Communicator> device_comm_;     // NCCL over the data-parallel group (GPUs)
  std::unique_ptr<dist::Communicator> device_tp_comm_;  // NCCL over the tensor-parallel group (GPUs)
  dist::Communicator* dp_comm_ = nullptr;
  int tp_ = 1, tp_rank_ = 0;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Model> whole_;  // tensor parallelism: the whole model's registry (no data)
  std::unique_ptr<DataParallel> dp_;
  long start_step_ = 0;
  uint64_t tokens_seen_ = 0;
};

// Evaluates a model on `batches` batches of the validation split in `data_dir`.
double evaluate_model(Model& model, data::DataLoader& val, int batches, int B, int T);

// This machine's single-precision GEMM rate in TFLOP/s (best of three 2048^3 sgemms).
double measure_sgemm_tflops();

}  // namespace lmf
