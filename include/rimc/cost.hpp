#pragma once
/// \file
/// The calibration cost model: cost_model (energy, latency, endurance
/// figures), layer_geometry (layer shapes from a network), and the cost of
/// re-programming, in-RRAM backprop and DoRA-in-SRAM calibration.

#include <rimc/cost/calibration_cost.hpp>
#include <rimc/cost/cost_model.hpp>
#include <rimc/cost/layer_geometry.hpp>
