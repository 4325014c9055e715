#pragma once
/// \file
/// The main entry point: DoRA adapters with their hand-written backward pass,
/// optimizers, the deploy form, and PEFT-compatible adapter files.

#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/adapt/optim.hpp>
#include <rimc/core/parallel.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/io/peft.hpp>
#include <rimc/io/safetensors.hpp>
