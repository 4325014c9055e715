#pragma once
/// \file
/// Umbrella header: the whole public API of rimc. Prefer the per-area
/// headers (rimc/core/..., rimc/kernels/...) in code that needs only a part.

#include <rimc/version.hpp>

#include <rimc/core/error.hpp>
#include <rimc/core/half.hpp>
#include <rimc/core/parallel.hpp>
#include <rimc/core/random.hpp>
#include <rimc/core/shape.hpp>
#include <rimc/core/tensor.hpp>

#include <rimc/kernels/conv2d.hpp>
#include <rimc/kernels/eltwise.hpp>
#include <rimc/kernels/im2col.hpp>
#include <rimc/kernels/linear.hpp>
#include <rimc/kernels/onednn.hpp>
#include <rimc/kernels/params.hpp>
#include <rimc/kernels/pooling.hpp>
#include <rimc/kernels/reference.hpp>
#include <rimc/kernels/thin_conv2d.hpp>

#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/adapt/dora_reference.hpp>
#include <rimc/adapt/optim.hpp>

#include <rimc/io/atomic_file.hpp>
#include <rimc/io/peft.hpp>
#include <rimc/io/safetensors.hpp>

#include <rimc/device/device_config.hpp>
#include <rimc/device/drift.hpp>
#include <rimc/device/presets.hpp>
#include <rimc/device/programming.hpp>

#include <rimc/crossbar/analog_layers.hpp>
#include <rimc/crossbar/compensation.hpp>
#include <rimc/crossbar/periphery.hpp>
#include <rimc/crossbar/tile.hpp>
#include <rimc/crossbar/tiled_array.hpp>
