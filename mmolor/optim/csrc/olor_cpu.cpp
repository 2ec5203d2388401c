// Copyright (c) mmolor contributors. All rights reserved.
//
// OLOR's fused CPU update: the AdamW / Adam / SGD step and the review in
// one pass over memory. torch's fused CPU AdamW reads the weight, gradient
// and both moments and writes three of them back (28 bytes per float32
// parameter); this kernel reads the anchor as well (32 bytes), where torch's
// fused step followed by a separate review moves 40.
//
// Per element (the same update as torch's step followed by mmolor's review,
// mmolor/optim/_functional.py):
//
//   Adam:  g = sign * grad + l2sp * (theta - anchor) + wd * theta
//                                              (wd: coupled decay, else 0)
//          m += (g - m) * (1 - beta1)
//          v  = beta2 * v + (1 - beta2) * g * g        (amsgrad: vmax)
//          theta = decay * theta + kappa * anchor + coef * m / (sqrt(v) + eps)
//   SGD:   g = sign * grad + l2sp * (theta - anchor) + wd * theta
//          b = momentum * b + (1 - dampening) * g     (if momentum)
//          d = nesterov ? g + momentum * b : b        (g without momentum)
//          theta = (1 - kappa) * theta + kappa * anchor + coef * d
//
// The review 'olor' is the kappa terms above, in the same pass. The review
// 'spd' needs sums over each whole tensor, so it takes two passes (NOTE
// [spd passes]): the step (kappa 0) with the sums, then the review of the
// tensors it applies to.
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
#include <type_traits>
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

// The chunks of the tensors whose `selected` entry is nonzero (all when
// `selected` is empty).
std::vector<Chunk> make_chunks(const std::vector<at::Tensor>& params,
                               const std::vector<char>& selected,
                               int64_t* total) {
  std::vector<Chunk> chunks;
  *total = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!selected.empty() && !selected[i]) continue;
    const int64_t numel = params[i].numel();
    *total += numel;
    for (int64_t b = 0; b < numel; b += kChunk) {
      chunks.push_back({static_cast<int64_t>(i), b, std::min(numel, b + kChunk)});
    }
  }
  return chunks;
}

// Calls f(chunk, index) for every chunk.
template <typename F>
void run_chunks(const std::vector<Chunk>& chunks, int64_t total, const F& f) {
  const int64_t n = static_cast<int64_t>(chunks.size());
  const int64_t threads = at::get_num_threads();
  if (n < 2 || total < kParallelNumel || threads < 2 ||
      at::in_parallel_region()) {
    for (int64_t i = 0; i < n; ++i) f(chunks[i], i);
    return;
  }
  std::atomic<int64_t> next{0};
  // One unit per thread; each thread then drains the shared queue.
  at::parallel_for(0, std::min(threads, n), 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      f(chunks[i], i);
    }
  });
}

// Per-chunk partial sums (`width` per chunk) added up per tensor.
std::vector<double> sum_by_tensor(const std::vector<Chunk>& chunks,
                                  const std::vector<double>& partial,
                                  size_t tensors, int width) {
  std::vector<double> sums(tensors * width, 0.0);
  for (size_t c = 0; c < chunks.size(); ++c) {
    for (int k = 0; k < width; ++k) {
      sums[chunks[c].tensor * width + k] += partial[c * width + k];
    }
  }
  return sums;
}

inline float load(const float* a, int64_t i) { return a[i]; }

inline float load(const uint16_t* a, int64_t i) {  // bfloat16 -> float32
  const uint32_t bits = static_cast<uint32_t>(a[i]) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// What a step pass does with the anchor: nothing (plain step), read it (the
// review 'olor' in the pass, L2-SP), or read it and sum what the review
// 'spd' needs (NOTE [spd passes]).
enum Pass { kPlain = 0, kAnchored = 1, kTracked = 2 };

template <typename F>
void with_pass(int pass, const F& f) {
  if (pass == kPlain) {
    f(std::integral_constant<int, kPlain>{});
  } else if (pass == kAnchored) {
    f(std::integral_constant<int, kAnchored>{});
  } else {
    f(std::integral_constant<int, kTracked>{});
  }
}

template <typename F>
void with_bool(bool value, const F& f) {
  if (value) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// The sums of pass kTracked, per chunk: grad . (theta_{t-1} - anchor),
// |theta_{t-1} - anchor|^2 and |theta_t - anchor|^2.
constexpr int kSums = 3;

// Runs `update(i, theta, a)`, which returns the new weight, over [begin,
// end). Pass kTracked also adds the kSums sums into `sums`, in kLanes float
// accumulators (so the compiler can vectorise without reordering a single
// sum: the same sums on every instruction set) moved into doubles every
// kFlush elements. Eight lanes, one AVX2 vector per sum: with sixteen, GCC
// 12 vectorised this loop with 16-byte vectors only, and pass kTracked
// took 1.8x the time of pass kAnchored (ResNet-50, 1 thread).
constexpr int kLanes = 8;
constexpr int64_t kFlush = 1024;

template <int pass, typename anchor_t, typename Update>
inline void step_range(float* __restrict param, const float* __restrict grad,
                       const anchor_t* __restrict anchor, int64_t begin,
                       int64_t end, double* sums, const Update& update) {
  if (pass != kTracked) {
    for (int64_t i = begin; i < end; ++i) {
      param[i] = update(i, param[i], pass == kPlain ? 0.0f : load(anchor, i));
    }
    return;
  }
  for (int64_t b = begin; b < end; b += kFlush) {
    const int64_t e = std::min(end, b + kFlush);
    float dot[kLanes] = {0}, old_sq[kLanes] = {0}, new_sq[kLanes] = {0};
    auto one = [&](int64_t i, int l) {
      const float theta = param[i], a = load(anchor, i);
      const float before = theta - a;
      dot[l] += grad[i] * before;
      old_sq[l] += before * before;
      const float now = update(i, theta, a);
      param[i] = now;
      new_sq[l] += (now - a) * (now - a);
    };
    int64_t i = b;
    for (; i + kLanes <= e; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) one(i + l, l);
    }
    for (; i < e; ++i) one(i, 0);
    for (int l = 0; l < kLanes; ++l) {
      sums[0] += dot[l];
      sums[1] += old_sq[l];
      sums[2] += new_sq[l];
    }
  }
}

struct AdamScalars {
  float sign, l2sp, weight_decay, one_minus_beta1, beta2, one_minus_beta2,
      eps, decay, kappa, coef;
};

template <typename anchor_t, bool amsgrad, int pass>
MMOLOR_CLONES void adam_block(float* __restrict param,
                              const float* __restrict grad,
                              float* __restrict exp_avg,
                              float* __restrict exp_avg_sq,
                              float* __restrict max_exp_avg_sq,
                              const anchor_t* __restrict anchor, int64_t begin,
                              int64_t end, AdamScalars s, double* sums) {
  step_range<pass>(param, grad, anchor, begin, end, sums,
                   [&](int64_t i, float theta, float a) {
    float g = s.sign * grad[i];
    if (pass != kPlain) g += s.l2sp * (theta - a);
    g += s.weight_decay * theta;
    float m = exp_avg[i];
    m += (g - m) * s.one_minus_beta1;
    exp_avg[i] = m;
    float v = s.beta2 * exp_avg_sq[i] + s.one_minus_beta2 * g * g;
    exp_avg_sq[i] = v;
    if (amsgrad) {
      v = std::max(max_exp_avg_sq[i], v);
      max_exp_avg_sq[i] = v;
    }
    return s.decay * theta + s.kappa * a + s.coef * m / (std::sqrt(v) + s.eps);
  });
}

struct SGDScalars {
  float sign, l2sp, weight_decay, momentum, one_minus_dampening, keep, kappa,
      coef;
};

template <typename anchor_t, bool use_momentum, bool nesterov, int pass>
MMOLOR_CLONES void sgd_block(float* __restrict param,
                             const float* __restrict grad,
                             float* __restrict buf,
                             const anchor_t* __restrict anchor, int64_t begin,
                             int64_t end, SGDScalars s, double* sums) {
  step_range<pass>(param, grad, anchor, begin, end, sums,
                   [&](int64_t i, float theta, float a) {
    float d = s.sign * grad[i];
    if (pass != kPlain) d += s.l2sp * (theta - a);
    d += s.weight_decay * theta;
    if (use_momentum) {
      const float b = s.momentum * buf[i] + s.one_minus_dampening * d;
      buf[i] = b;
      d = nesterov ? d + s.momentum * b : b;
    }
    return s.keep * theta + s.kappa * a + s.coef * d;
  });
}

// theta <- theta - kappa * (theta - anchor), the review 'spd' after its step.
template <typename anchor_t>
MMOLOR_CLONES void review_block(float* __restrict param,
                                const anchor_t* __restrict anchor,
                                int64_t begin, int64_t end, float kappa) {
  for (int64_t i = begin; i < end; ++i) {
    param[i] -= kappa * (param[i] - load(anchor, i));
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

struct AnchorPtr {
  const float* f32;
  const uint16_t* bf16;
};

AnchorPtr anchor_ptr(const at::Tensor& t) {
  if (t.scalar_type() == at::kBFloat16) {
    return {nullptr,
            reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>())};
  }
  return {t.data_ptr<float>(), nullptr};
}

// Calls f(anchor) with the anchor's typed pointer.
template <typename F>
void with_anchor(const AnchorPtr& a, const F& f) {
  if (a.bf16 != nullptr) {
    f(a.bf16);
  } else {
    f(a.f32);
  }
}

// NOTE [spd passes]: the review 'spd' of a tensor needs the sign of
// g . (theta_{t-1} - anchor) and the norms of the drift before and after
// the step: sums over the whole tensor, known once its last chunk has
// stepped. Pass 1 is the step without review (kappa 0), which sums them as
// it goes (pass kTracked: it reads what the review 'olor' reads); pass 2
// (spd_review) reviews the tensors whose kappa is nonzero, reading their
// weights and anchors only. Each pass runs all chunks in one parallel
// region.
//
// The per-tensor kappa from pass 1's per-chunk sums, then pass 2.
void spd_review(const std::vector<at::Tensor>& params,
                const std::vector<AnchorPtr>& anchors,
                const std::vector<Chunk>& step_chunks,
                const std::vector<double>& partial, float sign,
                double kappa) {
  const auto sums = sum_by_tensor(step_chunks, partial, params.size(), kSums);
  std::vector<float> kappas(params.size(), 0.0f);
  std::vector<char> selected(params.size(), 0);
  for (size_t i = 0; i < params.size(); ++i) {
    const double* t = &sums[kSums * i];
    const double before = std::sqrt(t[1]), now = std::sqrt(t[2]);
    if (!(sign * t[0] < 0) || !(now > 0)) continue;  // not moving away
    const double ratio = std::min(1.0, std::max(0.0, (now - before) / now));
    kappas[i] = static_cast<float>(kappa * ratio);
    selected[i] = kappas[i] != 0.0f;
  }
  int64_t total = 0;
  const auto chunks = make_chunks(params, selected, &total);
  run_chunks(chunks, total, [&](const Chunk& c, int64_t) {
    float* p = params[c.tensor].data_ptr<float>();
    with_anchor(anchors[c.tensor], [&](auto a) {
      review_block(p, a, c.begin, c.end, kappas[c.tensor]);
    });
  });
}

}  // namespace

// Every check runs before the first tensor is written: a bad input changes
// nothing, the step counts included.
//
// `kappa` is the group's rollback fraction of this step; `l2sp` adds
// l2sp * (theta - anchor) to the gradient; `spd` picks the review 'spd'
// (else 'olor'). The scalars of each tensor follow its own step count t
// (b1 = 1 - beta1^t, b2 = sqrt(1 - beta2^t)): eps' = eps * b2 and coef =
// -(1 - k) * lr / b1 * b2, computed in double, with k the kappa of the pass
// (0 for 'spd', whose review is a pass of its own); decay = (1 - k) * (1 -
// lr * wd) for decoupled weight decay, else 1 - k with wd coupled into g.
void olor_adam_(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
                std::vector<at::Tensor> exp_avgs,
                std::vector<at::Tensor> exp_avg_sqs,
                std::vector<at::Tensor> max_exp_avg_sqs,
                std::vector<at::Tensor> state_steps,
                std::vector<at::Tensor> anchors, double lr, double beta1,
                double beta2, double eps, double weight_decay,
                bool decoupled_weight_decay, double kappa, bool amsgrad,
                bool maximize, double l2sp, bool spd) {
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

  const float sign = maximize ? -1.0f : 1.0f;
  std::vector<AnchorPtr> anchor_ptrs;
  for (const auto& a : anchors) anchor_ptrs.push_back(anchor_ptr(a));
  const double k = spd ? 0.0 : kappa;  // the kappa of the step pass
  const double decay = decoupled_weight_decay ? (1 - k) * (1 - lr * weight_decay)
                                              : 1 - k;
  const double coupled_decay = decoupled_weight_decay ? 0.0 : weight_decay;
  const int pass = spd ? kTracked : (k != 0 || l2sp != 0) ? kAnchored : kPlain;
  struct Tensors {
    float *p, *m, *v, *vmax;
    const float* g;
    AdamScalars s;
  };
  std::vector<Tensors> tensors;
  tensors.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const double step = increment_step(state_steps[i]);
    const double bc1 = 1 - std::pow(beta1, step);
    const double bc2_sqrt = std::sqrt(1 - std::pow(beta2, step));
    const AdamScalars s{sign,
                        static_cast<float>(l2sp),
                        static_cast<float>(coupled_decay),
                        static_cast<float>(1.0 - beta1),
                        static_cast<float>(beta2),
                        static_cast<float>(1.0 - beta2),
                        static_cast<float>(eps * bc2_sqrt),
                        static_cast<float>(decay),
                        static_cast<float>(k),
                        static_cast<float>(-(1 - k) * lr / bc1 * bc2_sqrt)};
    tensors.push_back({params[i].data_ptr<float>(),
                       exp_avgs[i].data_ptr<float>(),
                       exp_avg_sqs[i].data_ptr<float>(),
                       amsgrad ? max_exp_avg_sqs[i].data_ptr<float>() : nullptr,
                       grads[i].data_ptr<float>(), s});
  }
  int64_t total = 0;
  const auto chunks = make_chunks(params, {}, &total);
  std::vector<double> partial(spd ? kSums * chunks.size() : 0, 0.0);
  run_chunks(chunks, total, [&](const Chunk& c, int64_t index) {
    const Tensors& t = tensors[c.tensor];
    double* sums = spd ? &partial[kSums * index] : nullptr;
    with_anchor(anchor_ptrs[c.tensor], [&](auto a) {
      using anchor_t = std::remove_const_t<std::remove_pointer_t<decltype(a)>>;
      with_pass(pass, [&](auto P) {
        with_bool(amsgrad, [&](auto ams) {
          adam_block<anchor_t, decltype(ams)::value, decltype(P)::value>(
              t.p, t.g, t.m, t.v, t.vmax, a, c.begin, c.end, t.s, sums);
        });
      });
    });
  });
  if (spd) spd_review(params, anchor_ptrs, chunks, partial, sign, kappa);
}

void olor_sgd_(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
               std::vector<at::Tensor> momentum_buffers,
               std::vector<at::Tensor> anchors, double weight_decay,
               double momentum, double dampening, bool nesterov, double lr,
               double kappa, bool maximize, double l2sp, bool spd) {
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
  const float sign = maximize ? -1.0f : 1.0f;
  std::vector<AnchorPtr> anchor_ptrs;
  for (const auto& a : anchors) anchor_ptrs.push_back(anchor_ptr(a));
  const double k = spd ? 0.0 : kappa;  // the kappa of the step pass
  const int pass = spd ? kTracked : (k != 0 || l2sp != 0) ? kAnchored : kPlain;
  const SGDScalars s{sign,
                     static_cast<float>(l2sp),
                     static_cast<float>(weight_decay),
                     static_cast<float>(momentum),
                     static_cast<float>(1.0 - dampening),
                     static_cast<float>(1.0 - k),
                     static_cast<float>(k),
                     static_cast<float>(-(1 - k) * lr)};
  int64_t total = 0;
  const auto chunks = make_chunks(params, {}, &total);
  std::vector<double> partial(spd ? kSums * chunks.size() : 0, 0.0);
  run_chunks(chunks, total, [&](const Chunk& c, int64_t index) {
    float* p = params[c.tensor].data_ptr<float>();
    const float* g = grads[c.tensor].data_ptr<float>();
    float* buf =
        use_momentum ? momentum_buffers[c.tensor].data_ptr<float>() : nullptr;
    double* sums = spd ? &partial[kSums * index] : nullptr;
    with_anchor(anchor_ptrs[c.tensor], [&](auto a) {
      using anchor_t = std::remove_const_t<std::remove_pointer_t<decltype(a)>>;
      with_pass(pass, [&](auto pass_t) {
        constexpr int P = decltype(pass_t)::value;
        if (!use_momentum) {
          sgd_block<anchor_t, false, false, P>(p, g, buf, a, c.begin, c.end, s,
                                               sums);
        } else if (nesterov) {
          sgd_block<anchor_t, true, true, P>(p, g, buf, a, c.begin, c.end, s,
                                             sums);
        } else {
          sgd_block<anchor_t, true, false, P>(p, g, buf, a, c.begin, c.end, s,
                                              sums);
        }
      });
    });
  });
  if (spd) spd_review(params, anchor_ptrs, chunks, partial, sign, kappa);
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
