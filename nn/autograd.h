// Define-by-run reverse-mode autodiff.
//
// Every op computes its result and, when any input needs a gradient, records a backward closure on
// a thread-local tape in execution order (which is a topological order). backward() walks the tape
// in reverse, handing each closure the gradient of its output.
//
// The gradient rule, written down once:
//  - parameter gradients ACCUMULATE (+=) across backward passes until zero_grad();
//  - activation gradients are WRITTEN by their first consumer and accumulated by later ones (an
//    activation read by two ops, as in a residual connection, gets the sum).
// Backward closures capture only the tensors they need, so activations nobody needs are freed as
// soon as the forward pass drops them; in inference mode (NoGradGuard) nothing is recorded at all.
#pragma once

#include <functional>
#include <initializer_list>
#include <memory>

#include "nn/tensor.h"

namespace toptag {

// Gradient storage of one Var. Closures hold slots, not values, so a value can die early.
struct GradSlot {
  Tensor grad;                // undefined until a consumer writes it
  bool is_parameter = false;  // parameter gradients persist and accumulate
  // zero_grad() on a parameter only sets this flag: the next backward overwrites the buffer instead
  // of adding to it, which saves a memset of every gradient and lets GEMMs run with beta = 0.
  bool stale = false;
};

class Var {
 public:
  Var() = default;
  // A leaf; with requires_grad it gets a gradient slot like an activation.
  explicit Var(Tensor value, bool requires_grad = false);
  // A trainable parameter: its gradient is allocated, zeroed, and accumulates.
  static Var parameter(Tensor value);

  const Tensor& value() const { return value_; }
  Tensor& value() { return value_; }
  const Shape& shape() const { return value_.shape(); }
  bool requires_grad() const { return slot_ != nullptr; }
  // The gradient, or an undefined tensor if none was computed (zeros for a parameter after zero_grad()).
  const Tensor& grad() const;
  Tensor& mutable_grad();
  const std::shared_ptr<GradSlot>& slot() const { return slot_; }
  void zero_grad();

 private:
  friend Var record_op(Tensor, std::initializer_list<const Var*>, std::function<void(const Tensor&)>);
  Tensor value_;
  std::shared_ptr<GradSlot> slot_;
};

// Where a backward closure puts the gradient of one input: `accumulate` false means the buffer is
// fresh and must be overwritten (first writer), true means add into it.
struct GradSink {
  float* data = nullptr;
  bool accumulate = false;
};
// requires: `slot` belongs to an input of the op whose closure is running; `shape` is that input's.
GradSink grad_sink(GradSlot& slot, const Shape& shape);

// Returns a Var holding `output`. If grad mode is on and any input requires a gradient, the output
// gets a slot and `backward(grad_output)` is recorded on the tape. Null inputs are skipped.
Var record_op(Tensor output, std::initializer_list<const Var*> inputs, std::function<void(const Tensor&)> backward);

// Runs the tape backwards from `loss` (a one-element Var), seeding its gradient with 1, then clears
// the tape. Throws if `loss` does not require a gradient.
void backward(const Var& loss);
// Same, with an explicit gradient for `output` (any shape).
void backward(const Var& output, const Tensor& grad_output);
// Drops everything recorded (for a forward pass whose backward will not run).
void clear_tape();
size_t tape_size();

bool grad_enabled();
// Inference mode for the current thread while alive: ops record nothing.
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace toptag
