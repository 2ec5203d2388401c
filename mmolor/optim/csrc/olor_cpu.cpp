// Copyright (c) mmolor contributors. All rights reserved.
//
// OLOR's fused CPU update: the AdamW / Adam / SGD step and the review in
// one pass over memory. torch's fused CPU AdamW reads the weight, gradient
// and both moments and writes three of them back (28 bytes per float32
// parameter); this kernel reads the anchor as well (32 bytes), where torch's
// fused step followed by a separate review moves 40.
//
// Per element (the same expansion as OLOR's multi-tensor update in
// mmolor/optim/_functional.py):
//
//   Adam:  g = sign * grad + wd * theta       (wd: coupled decay, else 0)
//          m += (g - m) * (1 - beta1)
//          v  = beta2 * v + (1 - beta2) * g * g        (amsgrad: vmax)
//          theta = decay * theta + kappa * anchor + coef * m / (sqrt(v) + eps)
//   SGD:   g = sign * grad + wd * theta
//          b = momentum * b + (1 - dampening) * g     (if momentum)
//          d = nesterov ? g + momentum * b : b        (g without momentum)
//          theta = (1 - kappa) * theta + kappa * anchor + coef * d
//
// Only float32 weights (the master weights under AMP too), contiguous, with
// float32 or bfloat16 anchors; mmolor checks every tensor before it calls in
// and uses its other paths for anything else.
//
// Built at install time by setup.py with -fopenmp: ATen's parallel_for is
// inlined from the headers and is serial without it. It then runs on torch's
// intra-op threads (torch.get_num_threads()).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// One version per instruction set, picked when the library loads.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    defined(__linux__)
#define MMOLOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MMOLOR_CLONES
#endif

// NOTE [one parallel region per step]: every tensor is cut into chunks of
// at most kChunk elements (a multiple of 64, so chunks of a tensor stay
// cache-line aligned), and one parallel region runs all chunks of all
// tensors, each thread taking the next chunk in turn. One region per tensor
// (ResNet-50: 161) would cost a fork and join each and run the small tensors
// on one thread; a static split would make every thread wait for the one
// the OS descheduled. Steps smaller than kParallelNumel run on the caller's
// thread.
constexpr int64_t kChunk = 1 << 15;
constexpr int64_t kParallelNumel = 1 << 16;

struct Chunk {
  int64_t tensor, begin, end;
};

std::vector<Chunk> make_chunks(const std::vector<at::Tensor>& params,
                               int64_t* total) {
  std::vector<Chunk> chunks;
  *total = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t numel = params[i].numel();
    *total += numel;
    for (int64_t b = 0; b < numel; b += kChunk) {
      chunks.push_back({static_cast<int64_t>(i), b, std::min(numel, b + kChunk)});
    }
  }
  return chunks;
}

template <typename F>
void run_chunks(const std::vector<Chunk>& chunks, int64_t total, const F& f) {
  const int64_t n = static_cast<int64_t>(chunks.size());
  const int64_t threads = at::get_num_threads();
  if (n < 2 || total < kParallelNumel || threads < 2 ||
      at::in_parallel_region()) {
    for (const auto& c : chunks) f(c);
    return;
  }
  std::atomic<int64_t> next{0};
  // One unit per thread; each thread then drains the shared queue.
  at::parallel_for(0, std::min(threads, n), 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      f(chunks[i]);
    }
  });
}

inline float load(const float* a, int64_t i) { return a[i]; }

inline float load(const uint16_t* a, int64_t i) {  // bfloat16 -> float32
  const uint32_t bits = static_cast<uint32_t>(a[i]) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

struct AdamScalars {
  float sign, weight_decay, one_minus_beta1, beta2, one_minus_beta2, eps,
      decay, kappa, coef;
};

template <typename anchor_t, bool amsgrad>
MMOLOR_CLONES void adam_block(float* __restrict param,
                              const float* __restrict grad,
                              float* __restrict exp_avg,
                              float* __restrict exp_avg_sq,
                              float* __restrict max_exp_avg_sq,
                              const anchor_t* __restrict anchor, int64_t begin,
                              int64_t end, AdamScalars s) {
  for (int64_t i = begin; i < end; ++i) {
    const float theta = param[i];
    const float g = s.sign * grad[i] + s.weight_decay * theta;
    float m = exp_avg[i];
    m += (g - m) * s.one_minus_beta1;
    exp_avg[i] = m;
    float v = s.beta2 * exp_avg_sq[i] + s.one_minus_beta2 * g * g;
    exp_avg_sq[i] = v;
    if (amsgrad) {
      v = std::max(max_exp_avg_sq[i], v);
      max_exp_avg_sq[i] = v;
    }
    param[i] = s.decay * theta + s.kappa * load(anchor, i) +
               s.coef * m / (std::sqrt(v) + s.eps);
  }
}

struct SGDScalars {
  float sign, weight_decay, momentum, one_minus_dampening, keep, kappa, coef;
};

template <typename anchor_t, bool use_momentum, bool nesterov>
MMOLOR_CLONES void sgd_block(float* __restrict param,
                             const float* __restrict grad,
                             float* __restrict buf,
                             const anchor_t* __restrict anchor, int64_t begin,
                             int64_t end, SGDScalars s) {
  for (int64_t i = begin; i < end; ++i) {
    const float theta = param[i];
    float d = s.sign * grad[i] + s.weight_decay * theta;
    if (use_momentum) {
      const float b = s.momentum * buf[i] + s.one_minus_dampening * d;
      buf[i] = b;
      d = nesterov ? d + s.momentum * b : b;
    }
    param[i] = s.keep * theta + s.kappa * load(anchor, i) + s.coef * d;
  }
}

void check_list(const std::vector<at::Tensor>& tensors,
                const std::vector<at::Tensor>& params, const char* name) {
  TORCH_CHECK(tensors.size() == params.size(), name, ": expected ",
              params.size(), " tensors, got ", tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() &&
                    t.numel() == params[i].numel(),
                name, "[", i, "]: expected a contiguous CPU tensor of ",
                params[i].numel(), " elements");
  }
}

void check_float32(const std::vector<at::Tensor>& tensors, const char* name) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(tensors[i].scalar_type() == at::kFloat, name, "[", i,
                "]: expected float32, got ", tensors[i].scalar_type());
  }
}

void check_anchors(const std::vector<at::Tensor>& anchors) {
  for (size_t i = 0; i < anchors.size(); ++i) {
    const auto dtype = anchors[i].scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "anchors[", i,
                "]: expected float32 or bfloat16, got ", dtype);
  }
}

void check_steps(const std::vector<at::Tensor>& steps, size_t n) {
  TORCH_CHECK(steps.size() == n, "state_steps: expected ", n,
              " tensors, got ", steps.size());
  for (size_t i = 0; i < n; ++i) {
    const auto dtype = steps[i].scalar_type();
    TORCH_CHECK(steps[i].device().is_cpu() && steps[i].numel() == 1 &&
                    (dtype == at::kFloat || dtype == at::kDouble),
                "state_steps[", i,
                "]: expected a one-element float32 or float64 CPU tensor");
  }
}

// Adds 1 to a step tensor (as torch's optimizers do) and returns the new
// count.
double increment_step(at::Tensor& step) {
  if (step.scalar_type() == at::kFloat) {
    float* value = step.data_ptr<float>();
    *value += 1.0f;
    return *value;
  }
  double* value = step.data_ptr<double>();
  *value += 1.0;
  return *value;
}

const uint16_t* bf16_data(const at::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
}

struct AnchorPtr {
  const float* f32;
  const uint16_t* bf16;
};

AnchorPtr anchor_ptr(const at::Tensor& t) {
  if (t.scalar_type() == at::kBFloat16) return {nullptr, bf16_data(t)};
  return {t.data_ptr<float>(), nullptr};
}

}  // namespace

// Every check runs before the first tensor is written: a bad input changes
// nothing, the step counts included.
//
// The scalars of each tensor follow its own step count t (b1 = 1 - beta1^t,
// b2 = sqrt(1 - beta2^t)): eps' = eps * b2 and coef = -(1 - kappa) * lr /
// b1 * b2, computed in double exactly as mmolor's Python helper
// (_adam_step_scalars) computes them; decay = (1 - kappa) * (1 - lr * wd)
// for decoupled weight decay, else 1 - kappa with wd coupled into g.
void olor_adam_(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
                std::vector<at::Tensor> exp_avgs,
                std::vector<at::Tensor> exp_avg_sqs,
                std::vector<at::Tensor> max_exp_avg_sqs,
                std::vector<at::Tensor> state_steps,
                std::vector<at::Tensor> anchors, double lr, double beta1,
                double beta2, double eps, double weight_decay,
                bool decoupled_weight_decay, double kappa, bool amsgrad,
                bool maximize) {
  check_list(params, params, "params");
  check_list(grads, params, "grads");
  check_list(exp_avgs, params, "exp_avgs");
  check_list(exp_avg_sqs, params, "exp_avg_sqs");
  check_list(anchors, params, "anchors");
  check_float32(params, "params");
  check_float32(grads, "grads");
  check_float32(exp_avgs, "exp_avgs");
  check_float32(exp_avg_sqs, "exp_avg_sqs");
  check_anchors(anchors);
  if (amsgrad) {
    check_list(max_exp_avg_sqs, params, "max_exp_avg_sqs");
    check_float32(max_exp_avg_sqs, "max_exp_avg_sqs");
  }
  check_steps(state_steps, params.size());

  const double decay = decoupled_weight_decay
                           ? (1 - kappa) * (1 - lr * weight_decay)
                           : 1 - kappa;
  const double coupled_decay = decoupled_weight_decay ? 0.0 : weight_decay;
  struct Tensors {
    float *p, *m, *v, *vmax;
    const float* g;
    AnchorPtr a;
    AdamScalars s;
  };
  std::vector<Tensors> tensors;
  tensors.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const double step = increment_step(state_steps[i]);
    const double bc1 = 1 - std::pow(beta1, step);
    const double bc2_sqrt = std::sqrt(1 - std::pow(beta2, step));
    const AdamScalars s{maximize ? -1.0f : 1.0f,
                        static_cast<float>(coupled_decay),
                        static_cast<float>(1.0 - beta1),
                        static_cast<float>(beta2),
                        static_cast<float>(1.0 - beta2),
                        static_cast<float>(eps * bc2_sqrt),
                        static_cast<float>(decay),
                        static_cast<float>(kappa),
                        static_cast<float>(-(1 - kappa) * lr / bc1 * bc2_sqrt)};
    tensors.push_back({params[i].data_ptr<float>(),
                       exp_avgs[i].data_ptr<float>(),
                       exp_avg_sqs[i].data_ptr<float>(),
                       amsgrad ? max_exp_avg_sqs[i].data_ptr<float>() : nullptr,
                       grads[i].data_ptr<float>(), anchor_ptr(anchors[i]), s});
  }
  int64_t total = 0;
  const auto chunks = make_chunks(params, &total);
  run_chunks(chunks, total, [&](const Chunk& c) {
    const Tensors& t = tensors[c.tensor];
    if (t.a.bf16 != nullptr && amsgrad) {
      adam_block<uint16_t, true>(t.p, t.g, t.m, t.v, t.vmax, t.a.bf16, c.begin,
                                 c.end, t.s);
    } else if (t.a.bf16 != nullptr) {
      adam_block<uint16_t, false>(t.p, t.g, t.m, t.v, t.vmax, t.a.bf16,
                                  c.begin, c.end, t.s);
    } else if (amsgrad) {
      adam_block<float, true>(t.p, t.g, t.m, t.v, t.vmax, t.a.f32, c.begin,
                              c.end, t.s);
    } else {
      adam_block<float, false>(t.p, t.g, t.m, t.v, t.vmax, t.a.f32, c.begin,
                               c.end, t.s);
    }
  });
}

void olor_sgd_(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
               std::vector<at::Tensor> momentum_buffers,
               std::vector<at::Tensor> anchors, double weight_decay,
               double momentum, double dampening, bool nesterov, double coef,
               double kappa, bool maximize) {
  const bool use_momentum = momentum != 0.0;
  check_list(params, params, "params");
  check_list(grads, params, "grads");
  check_list(anchors, params, "anchors");
  check_float32(params, "params");
  check_float32(grads, "grads");
  check_anchors(anchors);
  if (use_momentum) {
    check_list(momentum_buffers, params, "momentum_buffers");
    check_float32(momentum_buffers, "momentum_buffers");
  }
  const SGDScalars s{maximize ? -1.0f : 1.0f,
                     static_cast<float>(weight_decay),
                     static_cast<float>(momentum),
                     static_cast<float>(1.0 - dampening),
                     static_cast<float>(1.0 - kappa),
                     static_cast<float>(kappa),
                     static_cast<float>(coef)};
  struct Tensors {
    float *p, *buf;
    const float* g;
    AnchorPtr a;
  };
  std::vector<Tensors> tensors;
  tensors.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    tensors.push_back(
        {params[i].data_ptr<float>(),
         use_momentum ? momentum_buffers[i].data_ptr<float>() : nullptr,
         grads[i].data_ptr<float>(), anchor_ptr(anchors[i])});
  }
  int64_t total = 0;
  const auto chunks = make_chunks(params, &total);
  run_chunks(chunks, total, [&](const Chunk& c) {
    const Tensors& t = tensors[c.tensor];
    const bool bf16 = t.a.bf16 != nullptr;
    if (!use_momentum) {
      if (bf16) {
        sgd_block<uint16_t, false, false>(t.p, t.g, t.buf, t.a.bf16, c.begin,
                                          c.end, s);
      } else {
        sgd_block<float, false, false>(t.p, t.g, t.buf, t.a.f32, c.begin,
                                       c.end, s);
      }
    } else if (nesterov) {
      if (bf16) {
        sgd_block<uint16_t, true, true>(t.p, t.g, t.buf, t.a.bf16, c.begin,
                                        c.end, s);
      } else {
        sgd_block<float, true, true>(t.p, t.g, t.buf, t.a.f32, c.begin, c.end,
                                     s);
      }
    } else if (bf16) {
      sgd_block<uint16_t, true, false>(t.p, t.g, t.buf, t.a.bf16, c.begin,
                                       c.end, s);
    } else {
      sgd_block<float, true, false>(t.p, t.g, t.buf, t.a.f32, c.begin, c.end,
                                    s);
    }
  });
}

// The number of threads a parallel region of this library runs on: 1 when
// it was compiled without OpenMP (ATen's parallel_for is then serial),
// torch.get_num_threads() otherwise. For mmolor's tests.
int64_t parallel_threads() {
  std::atomic<int64_t> team{1};
#ifdef _OPENMP
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    const int64_t n = omp_get_num_threads();
    int64_t seen = team.load();
    while (n > seen && !team.compare_exchange_weak(seen, n)) {
    }
  });
#endif
  return team.load();
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("olor_adam_", &olor_adam_, "OLOR Adam/AdamW step and review (CPU)");
  m.def("olor_sgd_", &olor_sgd_, "OLOR SGD step and review (CPU)");
  m.def("parallel_threads", &parallel_threads,
        "Threads of a parallel region (1: built without OpenMP)");
}
