#pragma once
/// \file
/// Umbrella header: the whole public API of rimc. Prefer the per-area
/// headers (rimc/core/..., rimc/kernels/...) in code that needs only a part.

#include <rimc/version.hpp>

#include <rimc/core/error.hpp>
#include <rimc/core/parallel.hpp>
#include <rimc/core/random.hpp>
#include <rimc/core/shape.hpp>
#include <rimc/core/tensor.hpp>

#include <rimc/kernels/conv2d.hpp>
#include <rimc/kernels/eltwise.hpp>
#include <rimc/kernels/linear.hpp>
#include <rimc/kernels/onednn.hpp>
#include <rimc/kernels/params.hpp>
#include <rimc/kernels/pooling.hpp>
#include <rimc/kernels/reference.hpp>
