// Stand-in for the CUDA runtime header when csrc/cuda is compiled for the CPU emulator.
#pragma once

#include "../emulator.h"
