#pragma once
/// \file
/// The main entry point: the whole calibration workflow in one include.
/// Build or load a network (nn/), fold its batch norms, deploy it onto RRAM
/// crossbars and let it drift (device/, crossbar/, nn/deploy.hpp), calibrate
/// DoRA (or LoRA, or your own) adapters layer by layer from a few samples by
/// feature distillation or jointly by backprop (adapt/), save and reload
/// them as PEFT files, and evaluate. rimc/rimc.hpp adds the kernels, the
/// file formats and the cost model.

#include <rimc/version.hpp>

#include <rimc/core/error.hpp>
#include <rimc/core/parallel.hpp>
#include <rimc/core/random.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/core/units.hpp>
#include <rimc/kernels/arch/isa.hpp>

#include <rimc/device/device_config.hpp>
#include <rimc/device/drift.hpp>
#include <rimc/device/presets.hpp>
#include <rimc/device/programming.hpp>

#include <rimc/crossbar/compensation.hpp>
#include <rimc/crossbar/periphery.hpp>

#include <rimc/data/dataset.hpp>

#include <rimc/nn/deploy.hpp>
#include <rimc/nn/evaluate.hpp>
#include <rimc/nn/models.hpp>
#include <rimc/nn/network.hpp>

#include <rimc/adapt/adapted_layer.hpp>
#include <rimc/adapt/adapter.hpp>
#include <rimc/adapt/affine_adapter.hpp>
#include <rimc/adapt/backprop.hpp>
#include <rimc/adapt/budget.hpp>
#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/adapt/lora_adapter.hpp>
#include <rimc/adapt/optim.hpp>
#include <rimc/adapt/peft_files.hpp>
#include <rimc/adapt/schedule.hpp>
#include <rimc/adapt/vera_adapter.hpp>
#include <rimc/adapt/vera_files.hpp>
