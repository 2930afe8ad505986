#include "nn/autograd.h"

#include <unordered_map>
#include <vector>

#include "nn/check.h"
#include "nn/profile.h"

namespace toptag {

namespace {

struct TapeEntry {
  std::shared_ptr<GradSlot> output;
  std::function<void(const Tensor&)> backward;
  std::vector<GradSlot*> parameters;  // the inputs that are parameters (for the ready hook)
};

thread_local std::vector<TapeEntry> tape;
// Gradients smaller than this are summed on one thread: waking the team costs more.
constexpr int64_t kParallelAddThreshold = 1 << 14;
thread_local bool grad_mode = true;

}  // namespace

Var::Var(Tensor value, bool requires_grad) : value_(std::move(value)) {
  if (requires_grad) slot_ = std::make_shared<GradSlot>();
}

Var Var::parameter(Tensor value) {
  Var v(std::move(value), true);
  v.slot_->is_parameter = true;
  return v;
}

namespace {
// A parameter's gradient after zero_grad() (or before any backward) reads as zeros.
void materialize(GradSlot& slot, const Shape& shape) {
  if (slot.is_parameter && !slot.grad.defined()) slot.grad = Tensor::zeros(shape);
}
}  // namespace

const Tensor& Var::grad() const {
  static const Tensor none;
  if (!slot_) return none;
  materialize(*slot_, value_.shape());
  return slot_->grad;
}

Tensor& Var::mutable_grad() {
  if (!slot_) fail("mutable_grad() on a tensor that does not require a gradient");
  materialize(*slot_, value_.shape());
  if (!slot_->grad.sole_owner()) slot_->grad = slot_->grad.clone();  // the caller writes: copy on write
  return slot_->grad;
}

void Var::zero_grad() {
  if (slot_) slot_->grad = Tensor();
}

void add_grad(GradSlot& slot, Tensor grad) {
  ProfileScope profile("add_grad");
  if (!slot.grad.defined()) {
    slot.grad = std::move(grad);
    return;
  }
  TT_ASSERT(slot.grad.shape() == grad.shape());
  const int64_t n = grad.numel();
  // Copy on write: a buffer another slot (or the caller) still holds is never changed; the sum then
  // goes into `grad` if nobody else holds that, else into a new buffer.
  Tensor out = slot.grad.sole_owner() ? slot.grad : grad.sole_owner() ? grad : Tensor::empty(grad.shape());
  const float* a = slot.grad.data();
  const float* b = grad.data();
  float* y = out.data();
#pragma omp parallel for simd schedule(static) if (n > kParallelAddThreshold)
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
  slot.grad = std::move(out);
}

Tensor* grad_to_add_into(GradSlot& slot, const Shape& shape) {
  return slot.grad.defined() && slot.grad.sole_owner() && slot.grad.shape() == shape ? &slot.grad : nullptr;
}

Var record_op(Tensor output, std::initializer_list<const Var*> inputs, std::function<void(const Tensor&)> backward) {
  Var result(std::move(output));
  if (!grad_mode) return result;
  bool any = false;
  for (const Var* v : inputs) any = any || (v != nullptr && v->requires_grad());
  if (!any) return result;
  result.slot_ = std::make_shared<GradSlot>();
  std::vector<GradSlot*> parameters;
  for (const Var* v : inputs)
    if (v != nullptr && v->requires_grad() && v->slot()->is_parameter) parameters.push_back(v->slot().get());
  tape.push_back({result.slot_, std::move(backward), std::move(parameters)});
  return result;
}

void backward(const Var& output, const Tensor& grad_output, const ParameterReadyFn& on_ready) {
  if (!output.requires_grad()) fail("backward(): the output does not depend on anything that requires a gradient");
  expect_shape(grad_output, output.shape(), "backward() seed gradient");
  GradSlot& seed = *output.slot();
  add_grad(seed, grad_output.clone());
  // Move the tape out first: closures must not see (or grow) the tape they are being run from.
  std::vector<TapeEntry> entries;
  entries.swap(tape);
  // A parameter's gradient is final once the last op (in backward order) that reads it has run.
  std::unordered_map<GradSlot*, int> readers;
  if (on_ready)
    for (const TapeEntry& e : entries)
      for (GradSlot* p : e.parameters) ++readers[p];
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
    if (it->output->grad.defined()) it->backward(it->output->grad);
    if (!it->output->is_parameter && it->output.get() != &seed) it->output->grad = Tensor();  // free early
    if (on_ready)  // before the closure goes: it may hold the last reference to a parameter's slot
      for (GradSlot* p : it->parameters)
        if (--readers[p] == 0) on_ready(*p);
    it->backward = nullptr;  // release the tensors the closure saved
  }
}

void backward(const Var& loss, const ParameterReadyFn& on_ready) {
  if (loss.value().numel() != 1) fail("backward(): the loss must have one element, found shape {}", loss.shape().str());
  backward(loss, Tensor::full(loss.shape(), 1.0f), on_ready);
}

void clear_tape() {
  tape.clear();
}
size_t tape_size() {
  return tape.size();
}

bool grad_enabled() {
  return grad_mode;
}

NoGradGuard::NoGradGuard() : previous_(grad_mode) {
  grad_mode = false;
}
NoGradGuard::~NoGradGuard() {
  grad_mode = previous_;
}

}  // namespace toptag
