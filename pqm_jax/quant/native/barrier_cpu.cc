// An identity that XLA cannot fuse through, as an XLA FFI handler: the output is the input's
// buffer (aliased by the caller) or, where XLA hands over two buffers, a copy of it.
//
// Why: a residual stream's gradient is a running sum (each block adds its contribution to the
// gradient arriving from above). XLA's CPU fusion duplicates cheap elementwise producers into
// every consumer, so each block's gradient fusion re-adds every contribution from the blocks
// above it, once per layout its consumers want (103 operands for the lowest encoder block of a
// 16-speaker adaptation step of tiny.en). A custom call is opaque to fusion: its operand is
// computed once, into one buffer, and every consumer reads that (`barrier.py`).

#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error Materialize(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> out) {
  if (x.element_type() != out->element_type() || x.size_bytes() != out->size_bytes()) {
    return ffi::Error::InvalidArgument("the output must have the input's type and size");
  }
  if (x.untyped_data() != out->untyped_data() && x.size_bytes() > 0) {
    std::memcpy(out->untyped_data(), x.untyped_data(), x.size_bytes());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PqmMaterialize, Materialize,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()    // x, any shape and type
                                  .Ret<ffi::AnyBuffer>());  // the same values (aliased with x)
