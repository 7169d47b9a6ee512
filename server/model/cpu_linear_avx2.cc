// The CPU linear kernel compiled for one instruction set: see cpu_linear_isa.inc.
#define DELTASERVE_LINEAR_ISA avx2
#include "server/model/cpu_linear_isa.inc"
