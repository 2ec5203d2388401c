// Copyright (c) mmolor contributors. All rights reserved.
//
// OLOR's fused CPU update: the AdamW / Adam / SGD step and the review in
// one pass over memory. torch's fused CPU AdamW reads the weight, gradient
// and both moments and writes three of them back (28 bytes per float32
// parameter); this kernel reads the anchor as well (32 bytes), where torch's
// fused step followed by a separate review moves 40.
//
// Per element, with the scalars precomputed in Python (mmolor/optim/olor.py,
// the same expansion as OLOR's multi-tensor update):
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
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
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

constexpr int64_t kGrain = 1 << 16;

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

const uint16_t* bf16_data(const at::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
}

}  // namespace

// Every check runs before the first tensor is written: a bad input changes
// nothing.
void olor_adam_(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
                std::vector<at::Tensor> exp_avgs,
                std::vector<at::Tensor> exp_avg_sqs,
                std::vector<at::Tensor> max_exp_avg_sqs,
                std::vector<at::Tensor> anchors, std::vector<double> eps,
                std::vector<double> coef, double beta1, double beta2,
                double weight_decay, double decay, double kappa, bool amsgrad,
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
  TORCH_CHECK(eps.size() == params.size() && coef.size() == params.size(),
              "eps and coef: expected one value per tensor");
  for (size_t i = 0; i < params.size(); ++i) {
    const AdamScalars s{maximize ? -1.0f : 1.0f,
                        static_cast<float>(weight_decay),
                        static_cast<float>(1.0 - beta1),
                        static_cast<float>(beta2),
                        static_cast<float>(1.0 - beta2),
                        static_cast<float>(eps[i]),
                        static_cast<float>(decay),
                        static_cast<float>(kappa),
                        static_cast<float>(coef[i])};
    float* p = params[i].data_ptr<float>();
    const float* g = grads[i].data_ptr<float>();
    float* m = exp_avgs[i].data_ptr<float>();
    float* v = exp_avg_sqs[i].data_ptr<float>();
    float* vmax = amsgrad ? max_exp_avg_sqs[i].data_ptr<float>() : nullptr;
    const bool bf16 = anchors[i].scalar_type() == at::kBFloat16;
    const float* a32 = bf16 ? nullptr : anchors[i].data_ptr<float>();
    const uint16_t* a16 = bf16 ? bf16_data(anchors[i]) : nullptr;
    at::parallel_for(0, params[i].numel(), kGrain, [&](int64_t b, int64_t e) {
      if (bf16 && amsgrad) {
        adam_block<uint16_t, true>(p, g, m, v, vmax, a16, b, e, s);
      } else if (bf16) {
        adam_block<uint16_t, false>(p, g, m, v, vmax, a16, b, e, s);
      } else if (amsgrad) {
        adam_block<float, true>(p, g, m, v, vmax, a32, b, e, s);
      } else {
        adam_block<float, false>(p, g, m, v, vmax, a32, b, e, s);
      }
    });
  }
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
  for (size_t i = 0; i < params.size(); ++i) {
    float* p = params[i].data_ptr<float>();
    const float* g = grads[i].data_ptr<float>();
    float* buf = use_momentum ? momentum_buffers[i].data_ptr<float>() : nullptr;
    const bool bf16 = anchors[i].scalar_type() == at::kBFloat16;
    const float* a32 = bf16 ? nullptr : anchors[i].data_ptr<float>();
    const uint16_t* a16 = bf16 ? bf16_data(anchors[i]) : nullptr;
    at::parallel_for(0, params[i].numel(), kGrain, [&](int64_t b, int64_t e) {
      if (!use_momentum) {
        if (bf16) {
          sgd_block<uint16_t, false, false>(p, g, buf, a16, b, e, s);
        } else {
          sgd_block<float, false, false>(p, g, buf, a32, b, e, s);
        }
      } else if (nesterov) {
        if (bf16) {
          sgd_block<uint16_t, true, true>(p, g, buf, a16, b, e, s);
        } else {
          sgd_block<float, true, true>(p, g, buf, a32, b, e, s);
        }
      } else if (bf16) {
        sgd_block<uint16_t, true, false>(p, g, buf, a16, b, e, s);
      } else {
        sgd_block<float, true, false>(p, g, buf, a32, b, e, s);
      }
    });
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("olor_adam_", &olor_adam_, "OLOR Adam/AdamW step and review (CPU)");
  m.def("olor_sgd_", &olor_sgd_, "OLOR SGD step and review (CPU)");
}
