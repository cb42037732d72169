// Python bindings of the batched small-model sweep kernel (csrc/mirror_sweep.*), called from
// bindings.cpp's module. Every buffer is checked (dtype, shape, C-contiguity, writability) before
// the GIL is released around the kernel.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "buffers.h"
#include "chunks.h"
#include "common.h"
#include "mirror_sweep.h"

namespace symkern {

namespace mirror_sweep_bind {

namespace py = pybind11;
namespace sb = symkern::buffers;
namespace ms = symkern::mirror_sweep;

using sb::cview;

// Names of the parameter and target arrays per model (for error messages).
struct Names {
  std::vector<std::string> params, target;
};

inline Names names_of(ms::Model model) {
  switch (model) {
    case ms::Model::rescaling:
      return {{"u", "w"}, {"beta"}};
    case ms::Model::factorization:
      return {{"U", "W"}, {"A"}};
    case ms::Model::mlp:
      return {{"W1", "b1", "a"}, {"teacher_W1", "teacher_b1", "teacher_a"}};
  }
  return {};
}

// Outputs must already be numpy arrays: pybind11 would otherwise convert e.g. a list into a
// temporary array, and the results would be written into it and lost.
inline py::array output_array(const py::object& obj, const std::string& arg) {
  if (!py::isinstance<py::array>(obj)) sb::fail(arg, "must be a writable numpy array");
  return obj.cast<py::array>();
}

inline ms::Model model_of(int code) {
  if (code < 0 || code > 2) sb::fail("model", "must be 0 (rescaling), 1 (factorization) or 2 (mlp)");
  return static_cast<ms::Model>(code);
}

template <class T>
void sweep_typed(ms::Model model, const std::vector<py::array>& params,
                 const std::vector<py::array>& target, const py::object& offset,
                 const py::array& gamma, const py::array& eta, const py::array& noise,
                 const py::array& model_ids, index_t batch, int activation, std::uint64_t seed,
                 std::int64_t step0, std::int64_t steps, std::int64_t record_every,
                 const std::vector<py::object>& params_out, const py::object& losses,
                 std::int64_t chunk_steps) {
  const Names nm = names_of(model);
  const std::size_t np = nm.params.size(), nt = nm.target.size();
  if (params.size() != np)
    sb::fail("params", "must hold " + std::to_string(np) + " arrays for this model, got " +
                           std::to_string(params.size()));
  if (params_out.size() != np)
    sb::fail("params_out", "must hold " + std::to_string(np) + " arrays for this model, got " +
                               std::to_string(params_out.size()));
  if (target.size() != nt)
    sb::fail("target", "must hold " + std::to_string(nt) + " arrays for this model, got " +
                           std::to_string(target.size()));
  if (steps < 0) sb::fail("steps", "must be >= 0");
  if (step0 < 0) sb::fail("step0", "must be >= 0");
  if (record_every < 1) sb::fail("record_every", "must be >= 1");
  ms::Problem<T> p;
  p.model = model;
  p.seed = seed;
  // Shapes: the first parameter fixes M and the model's extents; everything else must agree.
  std::vector<std::vector<index_t>> pshape, tshape;
  if (model == ms::Model::rescaling) {
    const auto u = cview<T>(params[0], "u", 2, {-1, -1});
    p.M = u.shape[0];
    p.d = u.shape[1];
    if (batch < 0) sb::fail("batch", "must be >= 0 (0: population loss)");
    pshape = {{p.M, p.d}, {p.M, p.d}};
    tshape = {{p.M, p.d}};
  } else if (model == ms::Model::factorization) {
    const auto U = cview<T>(params[0], "U", 3, {-1, -1, -1});
    p.M = U.shape[0];
    p.m = U.shape[1];
    p.k = U.shape[2];
    const auto W = cview<T>(params[1], "W", 3, {p.M, -1, p.k});
    p.n = W.shape[1];
    if (batch != 0) sb::fail("batch", "must be 0 for the factorization (full matrix)");
    pshape = {{p.M, p.m, p.k}, {p.M, p.n, p.k}};
    tshape = {{p.M, p.m, p.n}};
  } else {
    const auto W1 = cview<T>(params[0], "W1", 3, {-1, -1, -1});
    p.M = W1.shape[0];
    p.h = W1.shape[1];
    p.d = W1.shape[2];
    const auto tW1 = cview<T>(target[0], "teacher_W1", 3, {p.M, -1, p.d});
    p.ht = tW1.shape[1];
    if (batch < 1) sb::fail("batch", "must be >= 1 for the mlp");
    if (activation < 0 || activation > 1) sb::fail("activation", "must be 0 (tanh) or 1 (relu)");
    p.activation = static_cast<ms::Activation>(activation);
    pshape = {{p.M, p.h, p.d}, {p.M, p.h}, {p.M, p.h}};
    tshape = {{p.M, p.ht, p.d}, {p.M, p.ht}, {p.M, p.ht}};
  }
  p.batch = batch;
  if (p.M < 1) sb::fail(nm.params[0], "must hold at least one model (M >= 1)");
  for (std::size_t i = 0; i < np; ++i) {
    const int nd = static_cast<int>(pshape[i].size());
    p.params_in[i] = cview<T>(params[i], nm.params[i], nd, pshape[i]).data;
    const std::string out_name = nm.params[i] + "_out";
    p.params_out[i] =
        cview<T>(output_array(params_out[i], out_name), out_name, nd, pshape[i], true).data;
  }
  for (std::size_t i = 0; i < nt; ++i)
    p.target[i] =
        cview<T>(target[i], nm.target[i], static_cast<int>(tshape[i].size()), tshape[i]).data;
  if (!offset.is_none()) {
    if (model != ms::Model::factorization)
      sb::fail("offset", "is only used by the factorization model (pass None)");
    if (!py::isinstance<py::array>(offset)) sb::fail("offset", "must be None or a numpy array");
    p.offset = cview<T>(offset.cast<py::array>(), "offset", 3, {p.M, p.m, p.k}).data;
  }
  p.gamma = cview<T>(gamma, "gamma", 1, {p.M}).data;
  p.eta = cview<T>(eta, "eta", 1, {p.M}).data;
  p.noise = cview<T>(noise, "noise", 1, {p.M}).data;
  const auto ids = cview<std::int64_t>(model_ids, "model_ids", 1, {p.M});
  for (index_t i = 0; i < p.M; ++i)
    if (ids.data[i] < 0 || ids.data[i] >= (std::int64_t{1} << 32))
      sb::fail("model_ids", "must be in [0, 2^32)");
  p.model_ids = ids.data;
  p.losses =
      cview<T>(output_array(losses, "losses"), "losses", 2, {p.M, steps / record_every}, true)
          .data;
  // chunks of ~0.2 s between checks for Ctrl-C (csrc/chunks.h); they change no number. Work
  // per step of the M models: the products of the loss and its gradient.
  const double B = static_cast<double>(std::max<index_t>(batch, 1)), M = static_cast<double>(p.M);
  const double work_per_step =
      model == ms::Model::rescaling       ? M * B * static_cast<double>(p.d)
      : model == ms::Model::factorization ? M * static_cast<double>(p.m * p.n * p.k)
                                          : M * B * static_cast<double>((p.h + p.ht) * p.d);
  chunks::run_in_chunks(steps, chunks::first_chunk(work_per_step), chunk_steps,
                        [&](std::int64_t lt_begin, std::int64_t lt_end) {
                          ms::sweep<T>(p, step0, steps, record_every, lt_begin, lt_end);
                        });
}

}  // namespace mirror_sweep_bind

// Registers the sweep kernel on symkern._C (validates every buffer, releases the GIL).
inline void bind_mirror_sweep(pybind11::module_& m) {
  namespace py = pybind11;
  namespace sb = symkern::buffers;
  namespace mb = mirror_sweep_bind;

  m.def(
      "mirror_sweep",
      [](int model, const std::vector<py::array>& params, const std::vector<py::array>& target,
         const py::object& offset, const py::array& gamma, const py::array& eta,
         const py::array& noise, const py::array& model_ids, index_t batch, int activation,
         std::uint64_t seed, std::int64_t step0, std::int64_t steps, std::int64_t record_every,
         const std::vector<py::object>& params_out, const py::object& losses,
         std::int64_t chunk_steps) {
        const auto mdl = mb::model_of(model);
        const std::string first = mb::names_of(mdl).params[0];
        if (params.empty()) sb::fail("params", "must not be empty");
        const py::array& p0 = params[0];
        if (p0.dtype().is(py::dtype::of<float>()))
          return mb::sweep_typed<float>(mdl, params, target, offset, gamma, eta, noise,
                                        model_ids, batch, activation, seed, step0, steps,
                                        record_every, params_out, losses, chunk_steps);
        if (p0.dtype().is(py::dtype::of<double>()))
          return mb::sweep_typed<double>(mdl, params, target, offset, gamma, eta, noise,
                                         model_ids, batch, activation, seed, step0, steps,
                                         record_every, params_out, losses, chunk_steps);
        sb::fail(first, "must have dtype float32 or float64, got " +
                            std::string(py::str(p0.dtype())));
      },
      py::arg("model"), py::arg("params"), py::arg("target"), py::arg("offset"),
      py::arg("gamma"), py::arg("eta"), py::arg("noise"), py::arg("model_ids"), py::arg("batch"),
      py::arg("activation"), py::arg("seed"), py::arg("step0"), py::arg("steps"),
      py::arg("record_every"), py::arg("params_out"), py::arg("losses"),
      py::arg("chunk_steps") = 0,
      "Batched small-model (S)GD sweep (symkern/mirror/sweeps.py), all steps of all M models.\n"
      "model: 0 rescaling (params [u, w] (M, d), target [beta (M, d)]), 1 factorization\n"
      "([U (M, m, k), W (M, n, k)], [A (M, m, n)], offset C (M, m, k) or None), 2 mlp\n"
      "([W1 (M, h, d), b1, a (M, h)], teacher [W1 (M, ht, d), b1, a (M, ht)]). All float arrays\n"
      "C-contiguous of params[0]'s dtype (float32/float64); gamma, eta, noise (M,); model_ids\n"
      "int64 (M,). batch: 0 = population loss / full matrix. activation: 0 tanh, 1 relu.\n"
      "Fills params_out (shapes of params) and losses (M, steps // record_every). The steps run\n"
      "in chunks of ~0.2 s between checks for Ctrl-C (KeyboardInterrupt); chunk_steps > 0 fixes\n"
      "the chunk size (the numbers do not depend on it).");

  m.def("mirror_sweep_isa", &mirror_sweep::isa_name,
        "Instruction-set variant the sweep kernel runs (avx512, avx2 or baseline).");

  m.def(
      "mirror_sweep_tanh_errors",
      [](double lo, double hi, index_t n) {
        if (n < 1) sb::fail("n", "must be >= 1");
        double e[4];
        {
          py::gil_scoped_release nogil;
          mirror_sweep::tanh_errors(lo, hi, n, e);
        }
        py::dict out;
        out["double_abs"] = e[0];
        out["double_rel"] = e[1];
        out["float_abs"] = e[2];
        out["float_rel"] = e[3];
        return out;
      },
      py::arg("lo") = -30.0, py::arg("hi") = 30.0, py::arg("n") = 4000001,
      "Max error of the sweep kernel's tanh against std::tanh on n points of [lo, hi] (double,\n"
      "and the value rounded to float).");
}

}  // namespace symkern
