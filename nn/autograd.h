// Define-by-run reverse-mode autodiff.
//
// Every op computes its result and, when any input needs a gradient, records a backward closure on
// a thread-local tape in execution order (which is a topological order). backward() walks the tape
// in reverse, handing each closure the gradient of its output.
//
// The gradient rule, written down once, and enforced by the one function every backward closure
// uses to deliver a gradient, add_grad(slot, g): the slot's gradient becomes grad + g.
//  - parameter gradients accumulate across backward passes until zero_grad();
//  - an activation read by two ops (a residual connection) gets the sum of both.
// The first delivery to an empty slot (an activation's first consumer, or a parameter after
// zero_grad()) takes g's buffer as it is: no zero fill and no addition.
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
  // Undefined until the first add_grad(). zero_grad() drops a parameter's buffer (back to the pool,
  // where the next backward pass finds it) instead of filling it with zeros; reading it then gives zeros.
  Tensor grad;
  bool is_parameter = false;  // parameter gradients persist and accumulate
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

// Delivers the gradient `grad` of one input of the op whose closure is running.
// requires: `slot` is that input's slot and grad has the input's shape.
// ensures: slot.grad == (previous gradient, or zeros) + grad. The first delivery adopts `grad`'s
// buffer, even one that others hold (both inputs of a sum get the same one); a buffer held by more
// than one is never written: a later sum goes to a buffer of the slot's own (copy on write), and
// mutable_grad() copies before it hands one out.
void add_grad(GradSlot& slot, Tensor grad);
// The slot's gradient when a backward may add its own part into it in place instead of delivering
// a tensor (a GEMM with beta 1, a col2im), saving a pass: defined, of `shape`, and held by nobody
// else. Null otherwise: deliver with add_grad.
Tensor* grad_to_add_into(GradSlot& slot, const Shape& shape);

// Returns a Var holding `output`. If grad mode is on and any input requires a gradient, the output
// gets a slot and `backward(grad_output)` is recorded on the tape. Null inputs are skipped.
Var record_op(Tensor output, std::initializer_list<const Var*> inputs, std::function<void(const Tensor&)> backward);

// Called during backward() with a parameter's slot as soon as its gradient is final (no op left on
// the tape reads the parameter): data-parallel training starts reducing it while backward goes on.
using ParameterReadyFn = std::function<void(GradSlot& parameter)>;

// Runs the tape backwards from `loss` (a one-element Var), seeding its gradient with 1, then clears
// the tape. Throws if `loss` does not require a gradient.
void backward(const Var& loss, const ParameterReadyFn& on_ready = nullptr);
// Same, with an explicit gradient for `output` (any shape).
void backward(const Var& output, const Tensor& grad_output, const ParameterReadyFn& on_ready = nullptr);
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
