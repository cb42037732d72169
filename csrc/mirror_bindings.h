// Python bindings of the fused mirror ops (csrc/mirror.*), called from bindings.cpp's module.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "buffers.h"
#include "common.h"
#include "mirror.h"

namespace symkern {

namespace mirror_bind {

namespace py = pybind11;
namespace sb = symkern::buffers;

using sb::cview;

// [lowest, highest] byte address a strided view touches (empty views touch nothing).
template <class T>
bool byte_range(const sb::View<T>& v, std::uintptr_t* lo, std::uintptr_t* hi) {
  index_t first = 0, last = 0;
  for (size_t d = 0; d < v.shape.size(); ++d) {
    if (v.shape[d] == 0) return false;
    const index_t span = (v.shape[d] - 1) * v.stride[d];
    (span < 0 ? first : last) += span;
  }
  *lo = reinterpret_cast<std::uintptr_t>(v.data + first);
  *hi = reinterpret_cast<std::uintptr_t>(v.data + last) + sizeof(T) - 1;
  return true;
}

// Outputs are written while inputs are still being read: no output may share memory with an
// input or with the other output.
template <class T>
void check_no_overlap(const sb::View<T>& a, const char* a_name, const sb::View<T>& b,
                      const char* b_name) {
  std::uintptr_t alo, ahi, blo, bhi;
  if (!byte_range(a, &alo, &ahi) || !byte_range(b, &blo, &bhi)) return;
  if (alo <= bhi && blo <= ahi)
    sb::fail(b_name, std::string("must not share memory with '") + a_name + "'");
}

// Views shared by both layouts: theta (M, d) any strides; shift None or (M, k); out None or
// (M, d); c (M, k). Checks dtypes, extents, contiguity, writability, aliasing and scale.
template <class T>
struct Rows {
  sb::View<T> theta, shift, out, c;
  bool has_shift = false, has_out = false;
  index_t M = 0, d = 0;
};

template <class T>
Rows<T> rows_views(const py::array& theta, index_t d_expected, index_t k, const py::object& shift,
                   double scale, const py::object& out, const py::array& c) {
  Rows<T> r;
  r.theta = sb::view<T>(theta, "theta", 2, {-1, d_expected});
  r.M = r.theta.shape[0];
  r.d = r.theta.shape[1];
  if (!std::isfinite(scale)) sb::fail("scale", "must be finite");
  if (!shift.is_none()) {
    if (!py::isinstance<py::array>(shift)) sb::fail("shift", "must be None or a numpy array");
    r.shift = cview<T>(shift.cast<py::array>(), "shift", 2, {r.M, k});
    r.has_shift = true;
  }
  r.c = cview<T>(c, "c", 2, {r.M, k}, true);
  check_no_overlap(r.theta, "theta", r.c, "c");
  if (r.has_shift) check_no_overlap(r.shift, "shift", r.c, "c");
  if (!out.is_none()) {
    if (!py::isinstance<py::array>(out)) sb::fail("out", "must be None or a numpy array");
    r.out = cview<T>(out.cast<py::array>(), "out", 2, {r.M, r.d}, true);
    r.has_out = true;
    check_no_overlap(r.theta, "theta", r.out, "out");
    check_no_overlap(r.c, "c", r.out, "out");
    if (r.has_shift) check_no_overlap(r.shift, "shift", r.out, "out");
  }
  return r;
}

}  // namespace mirror_bind

inline void bind_mirror(pybind11::module_& m) {
  namespace py = pybind11;
  namespace sb = symkern::buffers;
  namespace mb = mirror_bind;

  m.def(
      "mirror_sparse",
      [](const py::array& theta, const py::array& index, const py::array& value,
         const py::object& shift, double scale, const py::object& out, py::array& c) -> bool {
        auto run = [&](auto tag) -> bool {
          using T = decltype(tag);
          const auto ix = mb::cview<std::int64_t>(index, "index", 2, {});
          const index_t k = ix.shape[0], S = ix.shape[1];
          const auto val = mb::cview<T>(value, "value", 2, {k, S});
          const auto r = mb::rows_views<T>(theta, -1, k, shift, scale, out, c);
          mirror::SparseLayout layout;
          std::string err;
          {
            py::gil_scoped_release nogil;
            // The layout (disjointness included) decides the kernel's path, so it is measured
            // here on every call, never taken from the caller.
            err = mirror::plan_sparse(ix.data, k, S, r.d, r.has_out, &layout);
            if (err.empty())
              mirror::mirror_sparse<T>(r.theta.data, r.M, r.theta.stride[0], r.theta.stride[1],
                                       ix.data, val.data, layout,
                                       r.has_shift ? r.shift.data : nullptr, static_cast<T>(scale),
                                       r.has_out ? r.out.data : nullptr, r.c.data);
          }
          if (!err.empty()) sb::fail("index", err);
          return layout.disjoint;
        };
        if (theta.dtype().is(py::dtype::of<float>())) return run(float{});
        if (theta.dtype().is(py::dtype::of<double>())) return run(double{});
        sb::fail("theta",
                 "must have dtype float32 or float64, got " + std::string(py::str(theta.dtype())));
      },
      py::arg("theta"), py::arg("index"), py::arg("value"), py::arg("shift"), py::arg("scale"),
      py::arg("out"), py::arg("c"),
      "Sparse-column mirror op: c = O^T theta, out = theta + O(shift - scale c).\n"
      "theta (M, d) float32/float64, any strides; index int64 (k, S) and value (k, S) C-contiguous\n"
      "(column j: value[j, t] at coordinate index[j, t]); shift None or (M, k); out None (c only)\n"
      "or (M, d); c (M, k); outputs C-contiguous, writable, not aliasing the inputs.\n"
      "Returns True when the columns have disjoint supports and out was written in one pass.");

  m.def(
      "mirror_sparse_layout",
      [](const py::array& index, index_t d) {
        const auto ix = mb::cview<std::int64_t>(index, "index", 2, {});
        if (d < 0) sb::fail("d", "must be >= 0");
        mirror::SparseLayout layout;
        std::string err;
        {
          py::gil_scoped_release nogil;
          err = mirror::plan_sparse(ix.data, ix.shape[0], ix.shape[1], d, true, &layout);
        }
        if (!err.empty()) sb::fail("index", err);
        py::list pieces, rest;
        for (const auto& p : layout.pieces)
          pieces.append(py::make_tuple(p.j0, p.n, p.p, p.affine));
        for (const auto& r : layout.rest) rest.append(py::make_tuple(r.begin, r.end));
        py::dict out;
        out["disjoint"] = layout.disjoint;
        out["contiguous_entries"] = layout.contiguous_entries;
        out["scattered"] = layout.scattered;
        out["pieces"] = pieces;
        out["super_chunks"] = static_cast<index_t>(layout.supers.size()) - 1;
        out["rest"] = rest;
        return out;
      },
      py::arg("index"), py::arg("d"),
      "How mirror_sparse will sweep an int64 (k, S) index table over R^d (for tests and tuning):\n"
      "pieces [(j0, n, p, affine)], rest runs [(begin, end)], disjoint, contiguous_entries,\n"
      "scattered (rows staged one by one), super_chunks.");

  m.def(
      "mirror_dense",
      [](const py::array& theta, const py::array& dense_t, const py::object& shift, double scale,
         const py::object& out, py::array& c) {
        auto run = [&](auto tag) {
          using T = decltype(tag);
          const auto th = sb::view<T>(theta, "theta", 2);
          const auto ot = mb::cview<T>(dense_t, "dense_t", 2, {-1, th.shape[1]});
          const index_t k = ot.shape[0];
          const auto r = mb::rows_views<T>(theta, th.shape[1], k, shift, scale, out, c);
          py::gil_scoped_release nogil;
          mirror::mirror_dense<T>(r.theta.data, r.M, r.d, r.theta.stride[0], r.theta.stride[1],
                                  ot.data, k, r.has_shift ? r.shift.data : nullptr,
                                  static_cast<T>(scale), r.has_out ? r.out.data : nullptr,
                                  r.c.data);
        };
        if (theta.dtype().is(py::dtype::of<float>())) return run(float{});
        if (theta.dtype().is(py::dtype::of<double>())) return run(double{});
        sb::fail("theta",
                 "must have dtype float32 or float64, got " + std::string(py::str(theta.dtype())));
      },
      py::arg("theta"), py::arg("dense_t"), py::arg("shift"), py::arg("scale"), py::arg("out"),
      py::arg("c"),
      "Dense mirror op: c = theta O, out = theta + (shift - scale c) O^T, with dense_t = O^T\n"
      "(k, d) C-contiguous. theta (M, d) float32/float64, any strides; shift None or (M, k); out\n"
      "None (c only) or (M, d); c (M, k); outputs C-contiguous, writable, not aliasing inputs.");
}

}  // namespace symkern
