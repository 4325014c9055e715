#pragma once
/// \file
/// Umbrella header: every public header of rimc. Prefer rimc/dora.hpp for the
/// calibration workflow, or the per-area headers (rimc/core/..., rimc/nn/...)
/// in code that needs only a part.

#include <rimc/version.hpp>
#include <rimc/dora.hpp>

#include <rimc/core/error.hpp>
#include <rimc/core/half.hpp>
#include <rimc/core/parallel.hpp>
#include <rimc/core/random.hpp>
#include <rimc/core/shape.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/core/units.hpp>

#include <rimc/kernels/batch_norm.hpp>
#include <rimc/kernels/combine.hpp>
#include <rimc/kernels/conv2d.hpp>
#include <rimc/kernels/eltwise.hpp>
#include <rimc/kernels/im2col.hpp>
#include <rimc/kernels/linear.hpp>
#include <rimc/kernels/mse.hpp>
#include <rimc/kernels/onednn.hpp>
#include <rimc/kernels/params.hpp>
#include <rimc/kernels/pooling.hpp>
#include <rimc/kernels/reference.hpp>
#include <rimc/kernels/small_gemm.hpp>
#include <rimc/kernels/thin_conv2d.hpp>

#include <rimc/kernels/arch/dispatch.hpp>
#include <rimc/kernels/arch/isa.hpp>

#include <rimc/device/device_config.hpp>
#include <rimc/device/drift.hpp>
#include <rimc/device/presets.hpp>
#include <rimc/device/programming.hpp>

#include <rimc/crossbar/analog_layers.hpp>
#include <rimc/crossbar/compensation.hpp>
#include <rimc/crossbar/periphery.hpp>
#include <rimc/crossbar/tile.hpp>
#include <rimc/crossbar/tiled_array.hpp>

#include <rimc/io/atomic_file.hpp>
#include <rimc/io/idx.hpp>
#include <rimc/io/peft.hpp>
#include <rimc/io/read_file.hpp>
#include <rimc/io/safetensors.hpp>

#include <rimc/data/dataset.hpp>

#include <rimc/cost/calibration_cost.hpp>
#include <rimc/cost/cost_model.hpp>
#include <rimc/cost/layer_geometry.hpp>
#include <rimc/cost/sram.hpp>

#include <rimc/nn/deploy.hpp>
#include <rimc/nn/evaluate.hpp>
#include <rimc/nn/executor.hpp>
#include <rimc/nn/geometry.hpp>
#include <rimc/nn/graph.hpp>
#include <rimc/nn/layer.hpp>
#include <rimc/nn/models.hpp>
#include <rimc/nn/network.hpp>
#include <rimc/nn/passes.hpp>
#include <rimc/nn/serialize.hpp>

#include <rimc/adapt/adapted_layer.hpp>
#include <rimc/adapt/adapter.hpp>
#include <rimc/adapt/affine_adapter.hpp>
#include <rimc/adapt/backprop.hpp>
#include <rimc/adapt/budget.hpp>
#include <rimc/adapt/calibration_costs.hpp>
#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/adapt/dora_reference.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/adapt/feature_statistics.hpp>
#include <rimc/adapt/lora_adapter.hpp>
#include <rimc/adapt/optim.hpp>
#include <rimc/adapt/peft_files.hpp>
#include <rimc/adapt/schedule.hpp>
#include <rimc/adapt/vera_adapter.hpp>
#include <rimc/adapt/vera_files.hpp>
