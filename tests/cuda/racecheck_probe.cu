// Which shared-memory handoffs does compute-sanitizer's racecheck follow? One CTA per kernel, the synchronisation
// patterns of the sm90 kernels reduced to a few words of shared memory:
//   bwd_warp_release   producer lanes store, each arrives on full; consumers wait, load, sync on a named barrier
//                      (bar.sync, consumers only), and one step later lane 0 of each warp arrives on empty after
//                      __syncwarp (8 arrivals): the head-dim-64/128 backward's lse/softmax_d staging before the fix
//   bwd_warp_release_nobar  the same without the consumers' named barrier
//   bwd_thread_release the same with every consumer thread arriving on empty (256 arrivals): after the fix
//   bwd_relay_release  consumers bar.arrive to a relay warp that bar.syncs and releases with lane 0 (1 arrival):
//                      the head-dim-256 backward (the dQ warp releases the stage)
//   fwd_named          slot handoff through bar.arrive / bar.sync (the forward's dynamic scheduler before the fix),
//                      with ping-pong named barriers (ids in registers) among the consumers
//   fwd_named_nopp     the same without ping-pong (the head-dim-256 forward)
//   fwd_mbarrier       the slot handoff through two mbarriers (the kernel's pattern after the fix; it arrives on both
//                      in every phase rather than keeping a parity), with ping-pong
// Arguments NAME:TILES:DELAY (tiles: slot_handoff only; delay 1: the producer, 2: the consumers come late to each
// handoff).
// Build: nvcc -O3 -lineinfo -gencode=arch=compute_90a,code=sm_90a tests/cuda/racecheck_probe.cu -o racecheck_probe
// Run:   compute-sanitizer --tool racecheck --racecheck-report analysis ./racecheck_probe NAME:TILES:DELAY ...
// (csrc/sm90/README.md, "compute-sanitizer racecheck", has the result on an H200.)
#include <cstdio>
#include <cstring>

namespace {

constexpr int kStages = 2;
constexpr int kSteps = 6;
constexpr int kConsumers = 256;
constexpr int kThreads = 128 + kConsumers;  // warpgroup 0: producer warp (+ relay warp); then two consumer warpgroups

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(unsigned long long* b, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(b)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned long long* b) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(b)) : "memory");
}
__device__ __forceinline__ void mbar_wait(unsigned long long* b, unsigned parity) {
  asm volatile(
      "{\n .reg .pred p;\n WAIT_%=:\n mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra WAIT_%=;\n}\n" ::
          "r"(smem_addr(b)),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void bar_sync(int id, int n) { asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory"); }
__device__ __forceinline__ void bar_arrive(int id, int n) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(n) : "memory");
}

enum Release { kWarp = 0, kThread = 1, kRelay = 2, kWarpNoBar = 3 };

// Q-stage-like ring: data[stage][32] written by the producer lanes, read by every consumer thread.
template <int kRelease>
__global__ void staging(float* out, int delay) {
  __shared__ float data[kStages][32];
  __shared__ unsigned long long full[kStages], empty[kStages];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&full[s], 32);
      mbar_init(&empty[s], kRelease == kWarp || kRelease == kWarpNoBar ? kConsumers / 32 : kRelease == kThread ? kConsumers : 1);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (warp == 0) {  // producer
    for (int i = 0; i < kSteps; ++i) {
      const int s = i % kStages;
      mbar_wait(&empty[s], ((i / kStages) & 1) ^ 1);
      if (delay == 1) __nanosleep(100000);  // the consumers wait on full first
      data[s][lane] = float(i * 32 + lane);
      mbar_arrive(&full[s]);
    }
  } else if (warp == 1 && kRelease == kRelay) {  // relay (the dQ warp)
    for (int i = 0; i < kSteps; ++i) {
      bar_sync(2, kConsumers + 32);
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[i % kStages]);
    }
  } else if (warp >= 4) {  // consumers
    float acc = 0.f;
    int previous = -1;
    for (int i = 0; i < kSteps; ++i) {
      const int s = i % kStages;
      if (delay == 2) __nanosleep(100000);  // the producer waits on empty first
      mbar_wait(&full[s], (i / kStages) & 1);
      if ((kRelease == kWarp || kRelease == kWarpNoBar) && previous >= 0) {
        __syncwarp();
        if (lane == 0) mbar_arrive(&empty[previous]);
      }
      acc += data[s][(threadIdx.x * 7) % 32];
      if (kRelease != kWarpNoBar) bar_sync(1, kConsumers);  // the kDsFull barrier of each step
      if (kRelease == kThread && previous >= 0) mbar_arrive(&empty[previous]);
      if (kRelease == kRelay) bar_arrive(2, kConsumers + 32);
      previous = s;
    }
    if (kRelease == kWarp || kRelease == kWarpNoBar) {
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[previous]);
    }
    if (kRelease == kThread) mbar_arrive(&empty[previous]);
    out[threadIdx.x] = acc;
  }
}

// Forward scheduler slot: the producer writes it once per tile, the consumers read it.
template <bool kMbarrier, bool kPingPong>
__global__ void slot_handoff(float* out, int tiles, int delay) {
  __shared__ int slot;
  __shared__ unsigned long long slot_full, slot_empty;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    mbar_init(&slot_full, 1);
    mbar_init(&slot_empty, kConsumers);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (warp == 0) {
    for (int t = 0; t < tiles; ++t) {
      if (delay == 1) __nanosleep(100000);  // the consumers reach the handoff first (a tile with no keys)
      if (kMbarrier) {
        mbar_wait(&slot_empty, (t & 1) ^ 1);
        if (lane == 0) {
          slot = t + 1;
          mbar_arrive(&slot_full);
        }
      } else {
        bar_sync(4, kConsumers + 32);
        if (lane == 0) slot = t + 1;
        bar_arrive(5, kConsumers + 32);
      }
    }
  } else if (warp >= 4) {
    const int wg = (warp - 4) / 4;
    if (!kMbarrier) bar_arrive(4, kConsumers + 32);
    if (kPingPong && wg == 0) bar_arrive(6, kConsumers);
    int sum = 0;
    for (int t = 0; t < tiles; ++t) {
      if (delay == 2) __nanosleep(100000);  // the producer reaches the handoff first (a long mainloop)
      if (kPingPong) {  // take a turn, pass it on (barrier ids in registers, as in the kernel)
        bar_sync(6 + wg, kConsumers);
        bar_arrive(6 + (wg ^ 1), kConsumers);
      }
      if (kMbarrier) {
        mbar_wait(&slot_full, t & 1);
        sum += slot;
        mbar_arrive(&slot_empty);
      } else {
        bar_sync(5, kConsumers + 32);
        sum += slot;
        bar_arrive(4, kConsumers + 32);
      }
    }
    out[threadIdx.x] = float(sum);
  }
}

}  // namespace

// Each argument NAME:TILES:DELAY is one launch, reported by racecheck right after its "=== " line.
int main(int argc, char** argv) {
  float* out;
  cudaMalloc(&out, kThreads * sizeof(float));
  int failures = 0;
  for (int a = 1; a < argc; ++a) {
    char name[64];
    int tiles = 0, delay = 0;
    if (std::sscanf(argv[a], "%63[^:]:%d:%d", name, &tiles, &delay) != 3) return 2;
    std::printf("=== %s tiles=%d delay=%d\n", name, tiles, delay);
    std::fflush(stdout);
    if (!std::strcmp(name, "bwd_warp_release")) staging<kWarp><<<1, kThreads>>>(out, delay);
    else if (!std::strcmp(name, "bwd_warp_release_nobar")) staging<kWarpNoBar><<<1, kThreads>>>(out, delay);
    else if (!std::strcmp(name, "bwd_thread_release")) staging<kThread><<<1, kThreads>>>(out, delay);
    else if (!std::strcmp(name, "bwd_relay_release")) staging<kRelay><<<1, kThreads>>>(out, delay);
    else if (!std::strcmp(name, "fwd_named")) slot_handoff<false, true><<<1, kThreads>>>(out, tiles, delay);
    else if (!std::strcmp(name, "fwd_named_nopp")) slot_handoff<false, false><<<1, kThreads>>>(out, tiles, delay);
    else if (!std::strcmp(name, "fwd_mbarrier")) slot_handoff<true, true><<<1, kThreads>>>(out, tiles, delay);
    else return 2;
    const cudaError_t status = cudaDeviceSynchronize();
    std::printf("    %s\n", cudaGetErrorString(status));
    std::fflush(stdout);
    failures += status != cudaSuccess;
  }
  return failures;
}
