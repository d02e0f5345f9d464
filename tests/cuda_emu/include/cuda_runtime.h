#pragma once
// The CPU emulation's <cuda_runtime.h>: the runtime API and the device side (emu.h).
#include "cuda_runtime_api.h"
#include "../emu.h"
