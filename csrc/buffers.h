// Validation of Python buffers before they reach a kernel. Every pointer handed to a kernel is
// checked here for dtype, rank, extents and strides, so a bad call raises a Python exception that
// names the argument instead of reading out of bounds.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "common.h"

namespace symkern::buffers {

namespace py = pybind11;

[[noreturn]] inline void fail(const std::string& arg, const std::string& what) {
  throw py::value_error("symkern._C: argument '" + arg + "' " + what);
}

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// A typed view of a numpy buffer: data pointer, extents and strides in ELEMENTS (not bytes).
template <class T>
struct View {
  T* data = nullptr;
  std::vector<index_t> shape;
  std::vector<index_t> stride;
  index_t size(int d) const { return shape[d]; }
};

// Checks dtype (exactly T: no silent casts), rank, optional extents (-1 = any), element-aligned
// strides and, for outputs, writeability. Returns a view with element strides.
template <class T>
View<T> view(const py::array& a, const std::string& arg, int ndim,
             const std::vector<index_t>& expected_shape = {}, bool writable = false) {
  if (!py::isinstance<py::array_t<T>>(a) || !a.dtype().is(py::dtype::of<T>()))
    fail(arg, "must have dtype " + std::string(py::str(py::dtype::of<T>())) + ", got " +
                  std::string(py::str(a.dtype())));
  if (a.ndim() != ndim)
    fail(arg, "must be " + std::to_string(ndim) + "-dimensional, got shape " + shape_str(a));
  View<T> v;
  v.data = static_cast<T*>(const_cast<void*>(a.data()));
  for (int d = 0; d < ndim; ++d) {
    const index_t n = a.shape(d);
    if (d < static_cast<int>(expected_shape.size()) && expected_shape[d] >= 0 &&
        n != expected_shape[d])
      fail(arg, "has extent " + std::to_string(n) + " in dimension " + std::to_string(d) +
                    ", expected " + std::to_string(expected_shape[d]) + " (shape " +
                    shape_str(a) + ")");
    const index_t byte_stride = a.strides(d);
    if (byte_stride % static_cast<index_t>(sizeof(T)) != 0)
      fail(arg, "has a stride that is not a whole number of elements");
    v.shape.push_back(n);
    v.stride.push_back(byte_stride / static_cast<index_t>(sizeof(T)));
  }
  if (writable && !a.writeable()) fail(arg, "must be writable");
  return v;
}

// A C-contiguous view: as view(), and every dimension of extent > 1 must be packed row-major
// (for kernels that index with plain row-major offsets). An empty array has no layout to check
// (numpy reports zero strides for it).
template <class T>
View<T> cview(const py::array& a, const std::string& arg, int ndim,
              const std::vector<index_t>& shape, bool writable = false) {
  auto v = view<T>(a, arg, ndim, shape, writable);
  if (a.size() == 0) return v;
  index_t expect = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    if (v.shape[d] > 1 && v.stride[d] != expect) fail(arg, "must be C-contiguous");
    expect *= v.shape[d];
  }
  return v;
}

// Whether n contiguous floats hold no NaN and no +-inf: exactly those have every exponent bit
// set. Integer operations on the bit patterns, branch-free over the whole buffer (one pass, no
// early exit: bad input is the rare case), and immune to flags that let the compiler assume
// finite floats.
template <class T>
bool all_finite(const T* x, index_t n) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "float or double");
  using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  constexpr Bits exponent =
      static_cast<Bits>(sizeof(T) == 4 ? 0x7f800000ull : 0x7ff0000000000000ull);
  Bits all_ones = 0;
  for (index_t i = 0; i < n; ++i) {
    Bits b;
    std::memcpy(&b, x + i, sizeof(T));
    all_ones |= static_cast<Bits>((b & exponent) == exponent);
  }
  return all_ones == 0;
}

}  // namespace symkern::buffers
