/*
 * An emulated Ascend C API: the subset impls/ascendc/dcnv3_kernel.h calls, for g++ on a CPU, so that the
 * kernel's own source runs in CI (tests/emulated_ascendc/__init__.py builds it). Test-only.
 *
 * Each behaviour follows asc-devkit's documentation (docs/api/context/<API>.md, cited by name below):
 * - DataCopyPad (DataCopyPad(ISASI).md): blockCount in [1, 4095], blockLen in bytes in [1, 2097151]; a
 *   stride is the gap between one burst's end and the next one's start, in bytes on the global-memory
 *   side and in 32-byte data blocks on the unified-buffer side; each burst occupies a whole number of
 *   32-byte blocks in the unified buffer, the bytes past blockLen being dummy values; a LocalTensor
 *   operand starts 32-byte aligned.
 * - Vector operands (Axpy, Muls, Mul, Duplicate) start 32-byte aligned in the unified buffer, and Axpy
 *   accumulates dst = src * scalar + dst. WholeReduceSum: below, from WholeReduceSum.md.
 * - SetFlag/WaitFlag (SetFlag-WaitFlag.md): below; event ids 0 to 7, in pairs.
 * - SetAtomicAdd<float> / SetAtomicNone: only copies out to global memory add instead of storing.
 * - The unified buffer holds UnifiedBufferBytes() bytes (the 910B's 192 KB unless a test asks for less);
 *   TPipe::InitBuffer places buffers one after another, 32-byte aligned.
 * - <<<numBlocks, ...>>> (SIMD-BuiltIn关键字.md): numBlocks in [1, 65535]; each core sees GetBlockIdx()
 *   and GetBlockNum().
 *
 * Hostile where hardware is unforgiving: the unified buffer starts as NaN bytes, dummy bytes are NaN, an
 * allocation past the buffer, a copy or vector operand past its buffer or misaligned, and a copy outside
 * the global-memory buffers a caller registered (GlobalBuffers) fail, cores run
 * one after another in a scrambled order, atomic mode left on when a core finishes fails, and a hazard
 * tracker fails any unified-buffer access by one pipe (MTE2 copies in, V computes, MTE3 copies out, S is
 * the scalar unit) to bytes another pipe wrote, or a write to bytes another pipe read, unless the pipe
 * knows that access to be over: through a PipeBarrier<PIPE_ALL> or a chain of SetFlag/WaitFlag pairs
 * since (vector clocks per pipe; a scalar read excepted: it is over before the next instruction issues).
 * A flag set twice, waited for where none was set, or left set at the end fails too. A failure throws
 * ascendc_emulation::Fault naming the rule.
 *
 * What it cannot show: the device compiler, timing, races between cores (they run one at a time),
 * the hardware's atomic arithmetic, and any API outside this subset.
 */
#pragma once

#include <algorithm>
#include <array>
#include <utility>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <type_traits>
#include <string>
#include <vector>

#define __global__
#define __vector__
#define __aicore__
#define __gm__
#define GM_ADDR uint8_t*

enum pipe_t { PIPE_S, PIPE_V, PIPE_MTE2, PIPE_MTE3, PIPE_ALL };

namespace ascendc_emulation {

struct Fault : std::runtime_error {
    explicit Fault(const std::string& what) : std::runtime_error("emulated Ascend C: " + what) {}
};

// What a launch did, summed over its cores: the per-pixel figures of the kernel's design.
struct Counters {
    uint64_t copiesIn = 0, copiesOut = 0, bytesIn = 0, bytesOut = 0, barriers = 0, flags = 0, vectorOps = 0, scalarUb = 0;
    uint64_t ubBytes = 0;  // the most any core allocated
};

constexpr uint32_t BLOCK_BYTES = 32;
constexpr uint32_t MAX_BURSTS = 4095;
constexpr uint32_t MAX_BURST_BYTES = 2097151;
constexpr uint32_t MAX_BLOCKS = 65535;

enum class Pipe : uint8_t { None, S, V, MTE2, MTE3 };

inline const char* Name(Pipe pipe)
{
    switch (pipe) {
        case Pipe::S: return "S";
        case Pipe::V: return "V";
        case Pipe::MTE2: return "MTE2";
        case Pipe::MTE3: return "MTE3";
        default: return "none";
    }
}

inline uint32_t AlignUp(uint32_t bytes)
{
    return (bytes + BLOCK_BYTES - 1) / BLOCK_BYTES * BLOCK_BYTES;
}

inline uint32_t UnifiedBufferBytes()
{
    const char* configured = std::getenv("ASCENDC_EMULATED_UB_BYTES");
    return configured != nullptr ? static_cast<uint32_t>(std::strtoul(configured, nullptr, 10)) : 192 * 1024;
}

constexpr uint32_t PIPES = 4;  // S, V, MTE2, MTE3: the Pipe values less None
constexpr uint32_t EVENT_IDS = 8;  // TEventID's range on the 910B (SetFlag-WaitFlag.md)
constexpr uint32_t EVENTS = 12;  // the HardEvent values emulated

inline uint32_t Slot(Pipe pipe) { return static_cast<uint32_t>(pipe) - 1; }

// Which instructions of each pipe a pipe knows to have finished: entry q of pipe p's clock is the number
// of pipe q's instructions that complete before pipe p's next one starts.
using Clock = std::array<uint64_t, PIPES>;

inline void Join(Clock& into, const Clock& from)
{
    for (uint32_t q = 0; q < PIPES; ++q) {
        into[q] = std::max(into[q], from[q]);
    }
}

// One vector core while it runs: its unified buffer, per pipe what it knows of the others (their clocks,
// moved forward only by PipeBarrier<PIPE_ALL> and WaitFlag), and per 4-byte word of the buffer the last
// write (pipe, that pipe's instruction number) and each pipe's last read.
struct Core {
    uint32_t index = 0, count = 1;
    std::vector<uint8_t> ub;
    std::vector<Pipe> writer;
    std::vector<uint64_t> written;
    std::vector<Clock> read;
    std::array<Clock, PIPES> clock{};
    // A set flag per (event, id): the source pipe's clock when it was set.
    std::vector<std::pair<bool, Clock>> flags;
    uint32_t allocated = 0;
    bool atomicAdd = false;

    explicit Core(uint32_t bytes)
        : ub(bytes, 0xFF), writer(bytes / 4, Pipe::None), written(bytes / 4, 0), read(bytes / 4, Clock{}),
          flags(EVENTS * EVENT_IDS, {false, Clock{}})
    {}

    // An instruction issued to `pipe`: its number there. The scalar unit issues in program order, so
    // what it has waited for is over before anything it issues later starts; its own stores are not.
    uint64_t Issue(Pipe pipe)
    {
        Clock& own = clock[Slot(pipe)];
        for (uint32_t q = 0; q < PIPES; ++q) {
            if (q != Slot(Pipe::S)) {
                own[q] = std::max(own[q], clock[Slot(Pipe::S)][q]);
            }
        }
        return ++own[Slot(pipe)];
    }

    void Access(Pipe pipe, uint64_t instruction, uint32_t start, uint32_t bytes, bool write)
    {
        const Clock& known = clock[Slot(pipe)];
        for (uint32_t w = start / 4; w < (start + bytes + 3) / 4; ++w) {
            if (writer[w] != Pipe::None && writer[w] != pipe && written[w] > known[Slot(writer[w])]) {
                Hazard(pipe, writer[w], "wrote", w * 4);
            }
            if (write) {
                // A scalar read is over before the scalar issues the next instruction.
                for (Pipe other : {Pipe::V, Pipe::MTE2, Pipe::MTE3}) {
                    if (other != pipe && read[w][Slot(other)] > known[Slot(other)]) {
                        Hazard(pipe, other, "read", w * 4);
                    }
                }
                writer[w] = pipe;
                written[w] = instruction;
            } else {
                read[w][Slot(pipe)] = instruction;
            }
        }
    }

    void Barrier()
    {
        Clock all{};
        for (const Clock& known : clock) {
            Join(all, known);
        }
        clock.fill(all);
    }

    [[noreturn]] void Hazard(Pipe pipe, Pipe other, const char* did, uint32_t byte) const
    {
        throw Fault(std::string("core ") + std::to_string(index) + ": " + Name(pipe) + " touches UB byte " +
                    std::to_string(byte) + " that " + Name(other) + " " + did +
                    " with no barrier between (PipeBarrier<PIPE_ALL> or SetFlag/WaitFlag)");
    }
};

inline Core*& Current()
{
    static thread_local Core* core = nullptr;
    return core;
}

inline Core& Running()
{
    if (Current() == nullptr) {
        throw Fault("an Ascend C call outside a kernel launch");
    }
    return *Current();
}

inline Counters& Count()
{
    static Counters counters;
    return counters;
}

// Global-memory regions whose stores are counted per float (each output element written exactly once).
struct TrackedRegion {
    const uint8_t* start;
    size_t bytes;
    std::vector<uint32_t> stores;
};

inline std::vector<TrackedRegion>& Tracked()
{
    static std::vector<TrackedRegion> regions;
    return regions;
}

inline void CountStores(const uint8_t* address, size_t bytes)
{
    for (TrackedRegion& region : Tracked()) {
        if (address >= region.start && address + bytes <= region.start + region.bytes) {
            size_t first = (address - region.start) / 4;
            for (size_t i = first; i < first + bytes / 4; ++i) {
                ++region.stores[i];
            }
        }
    }
}

// The global-memory buffers a launch may touch, where its caller names them (the driver does; the
// torch build does not, and AddressSanitizer watches it instead): a copy outside all of them fails.
struct GlobalBuffer {
    const uint8_t* start;
    size_t bytes;
};

inline std::vector<GlobalBuffer>& GlobalBuffers()
{
    static std::vector<GlobalBuffer> buffers;
    return buffers;
}

inline void CheckGlobal(const void* address, uint64_t bytes, const char* what)
{
    if (GlobalBuffers().empty()) {
        return;
    }
    const uint8_t* first = static_cast<const uint8_t*>(address);
    for (const GlobalBuffer& buffer : GlobalBuffers()) {
        if (first >= buffer.start && first + bytes <= buffer.start + buffer.bytes) {
            return;
        }
    }
    throw Fault(std::string(what) + ": " + std::to_string(bytes) + " bytes of global memory outside every buffer");
}

// The launch the <<<blocks, l2ctrl, stream>>> syntax makes, rewritten by the build into a call of this.
template <typename Kernel, typename... Args>
void Launch(uint32_t blocks, void* stream, Kernel kernel, Args... args)
{
    (void)stream;
    if (blocks < 1 || blocks > MAX_BLOCKS) {
        throw Fault("numBlocks " + std::to_string(blocks) + " outside [1, 65535]");
    }
    std::vector<uint32_t> order(blocks);
    std::iota(order.begin(), order.end(), 0u);
    static std::mt19937 scramble(20261202u);
    std::shuffle(order.begin(), order.end(), scramble);
    for (uint32_t block : order) {
        Core core(UnifiedBufferBytes());
        core.index = block;
        core.count = blocks;
        Current() = &core;
        try {
            kernel(args...);
        } catch (...) {
            Current() = nullptr;
            throw;
        }
        Current() = nullptr;
        Count().ubBytes = std::max<uint64_t>(Count().ubBytes, core.allocated);
        if (core.atomicAdd) {
            throw Fault("core " + std::to_string(block) + " ended with atomic add still on (SetAtomicNone missing)");
        }
        for (const auto& flag : core.flags) {
            if (flag.first) {
                throw Fault("core " + std::to_string(block) + " ended with a flag set that no WaitFlag took "
                            "(SetFlag/WaitFlag come in pairs)");
            }
        }
    }
}

}  // namespace ascendc_emulation

namespace AscendC {

using ascendc_emulation::Fault;
using ascendc_emulation::Pipe;
using ascendc_emulation::Running;

enum class TPosition : uint8_t { VECIN, VECOUT, VECCALC };

inline int64_t GetBlockIdx() { return Running().index; }
inline int64_t GetBlockNum() { return Running().count; }
inline void InitSocState() {}

template <pipe_t pipe>
inline void PipeBarrier()
{
    static_assert(pipe == PIPE_ALL, "the emulation orders pipes with PipeBarrier<PIPE_ALL> only");
    Running().Barrier();
    ++ascendc_emulation::Count().barriers;
}

template <typename T>
inline void SetAtomicAdd()
{
    static_assert(std::is_same<T, float>::value, "the emulation adds float32 atomically only");
    Running().atomicAdd = true;
}

inline void SetAtomicNone() { Running().atomicAdd = false; }

// SetFlag<event>(id) / WaitFlag<event>(id) (SetFlag-WaitFlag.md): the flag is set once every earlier
// instruction of the source pipe has finished, and the destination pipe's later instructions wait for
// it, which takes it. Pairs only: setting a flag that is already set, or waiting where no SetFlag came
// before in program order (the emulation runs instructions as they are issued), fails.
enum class HardEvent : uint8_t { MTE2_V, V_MTE2, MTE3_V, V_MTE3, MTE2_S, S_MTE2, V_S, S_V, MTE3_S, S_MTE3, MTE2_MTE3,
                                 MTE3_MTE2 };

constexpr std::pair<Pipe, Pipe> Pipes(HardEvent event)
{
    constexpr std::pair<Pipe, Pipe> pipes[] = {
        {Pipe::MTE2, Pipe::V}, {Pipe::V, Pipe::MTE2}, {Pipe::MTE3, Pipe::V}, {Pipe::V, Pipe::MTE3},
        {Pipe::MTE2, Pipe::S}, {Pipe::S, Pipe::MTE2}, {Pipe::V, Pipe::S}, {Pipe::S, Pipe::V},
        {Pipe::MTE3, Pipe::S}, {Pipe::S, Pipe::MTE3}, {Pipe::MTE2, Pipe::MTE3}, {Pipe::MTE3, Pipe::MTE2}};
    return pipes[static_cast<uint32_t>(event)];
}

inline std::pair<bool, ascendc_emulation::Clock>& Flag(HardEvent event, int8_t id, const char* what)
{
    if (id < 0 || id >= static_cast<int8_t>(ascendc_emulation::EVENT_IDS)) {
        throw Fault(std::string(what) + ": event id " + std::to_string(id) + " outside [0, 7]");
    }
    return Running().flags[static_cast<uint32_t>(event) * ascendc_emulation::EVENT_IDS + id];
}

template <HardEvent event>
inline void SetFlag(int8_t id)
{
    auto& flag = Flag(event, id, "SetFlag");
    if (flag.first) {
        throw Fault("SetFlag on event id " + std::to_string(id) + " that is already set: the second set is lost");
    }
    ascendc_emulation::Core& core = Running();
    core.Issue(Pipes(event).first);
    flag = {true, core.clock[ascendc_emulation::Slot(Pipes(event).first)]};
    ++ascendc_emulation::Count().flags;
}

template <HardEvent event>
inline void WaitFlag(int8_t id)
{
    auto& flag = Flag(event, id, "WaitFlag");
    if (!flag.first) {
        throw Fault("WaitFlag on event id " + std::to_string(id) + " that no SetFlag set before it: the pipe would hang");
    }
    ascendc_emulation::Core& core = Running();
    core.Issue(Pipes(event).second);
    ascendc_emulation::Join(core.clock[ascendc_emulation::Slot(Pipes(event).second)], flag.second);
    flag.first = false;
}

template <typename T>
class GlobalTensor {
public:
    void SetGlobalBuffer(__gm__ T* buffer, uint64_t size = 0)
    {
        (void)size;
        base = buffer;
    }
    GlobalTensor operator[](uint64_t offset) const
    {
        GlobalTensor view;
        view.base = base + offset;
        return view;
    }
    T GetValue(uint64_t index) const
    {
        ascendc_emulation::CheckGlobal(base + index, sizeof(T), "GlobalTensor::GetValue");
        return base[index];
    }
    void SetValue(uint64_t index, T value) const
    {
        ascendc_emulation::CheckGlobal(base + index, sizeof(T), "GlobalTensor::SetValue");
        base[index] = value;
    }
    T* Address() const { return base; }

private:
    T* base = nullptr;
};

// A typed window of the running core's unified buffer: where it starts and where its buffer ends.
template <typename T>
class LocalTensor {
public:
    LocalTensor() = default;
    LocalTensor(uint32_t startByte, uint32_t endByte) : start(startByte), end(endByte) {}

    LocalTensor operator[](uint32_t offset) const
    {
        uint32_t moved = start + offset * static_cast<uint32_t>(sizeof(T));
        if (moved > end) {
            throw Fault("LocalTensor offset " + std::to_string(offset) + " past its buffer");
        }
        return LocalTensor(moved, end);
    }
    T GetValue(uint32_t index) const
    {
        uint32_t byte = Checked(index, 1, "GetValue");
        Running().Access(Pipe::S, Running().Issue(Pipe::S), byte, sizeof(T), false);
        ++ascendc_emulation::Count().scalarUb;
        T value;
        std::memcpy(&value, &Running().ub[byte], sizeof(T));
        return value;
    }
    void SetValue(uint32_t index, T value) const
    {
        uint32_t byte = Checked(index, 1, "SetValue");
        Running().Access(Pipe::S, Running().Issue(Pipe::S), byte, sizeof(T), true);
        ++ascendc_emulation::Count().scalarUb;
        std::memcpy(&Running().ub[byte], &value, sizeof(T));
    }
    // The byte `index` elements in, after checking that `count` elements from there lie in the buffer.
    uint32_t Checked(uint32_t index, uint32_t count, const char* what) const
    {
        uint64_t last = start + (static_cast<uint64_t>(index) + count) * sizeof(T);
        if (last > end) {
            throw Fault(std::string(what) + ": " + std::to_string(count) + " elements at " + std::to_string(index) +
                        " run past the buffer (" + std::to_string((end - start) / sizeof(T)) + " elements)");
        }
        return start + index * static_cast<uint32_t>(sizeof(T));
    }
    uint32_t Aligned(const char* what) const
    {
        if (start % ascendc_emulation::BLOCK_BYTES != 0) {
            throw Fault(std::string(what) + ": a LocalTensor operand at UB byte " + std::to_string(start) +
                        " is not 32-byte aligned");
        }
        return start;
    }
    T* Data() const { return reinterpret_cast<T*>(&Running().ub[start]); }

private:
    uint32_t start = 0, end = 0;
};

template <TPosition position>
class TBuf {
public:
    template <typename T>
    LocalTensor<T> Get() const
    {
        return LocalTensor<T>(start, start + bytes);
    }
    uint32_t start = 0, bytes = 0;
};

class TPipe {
public:
    template <TPosition position>
    void InitBuffer(TBuf<position>& buffer, uint32_t bytes)
    {
        ascendc_emulation::Core& core = Running();
        uint32_t start = ascendc_emulation::AlignUp(core.allocated);
        if (static_cast<uint64_t>(start) + bytes > core.ub.size()) {
            throw Fault("InitBuffer of " + std::to_string(bytes) + " bytes at UB byte " + std::to_string(start) +
                        " overflows the " + std::to_string(core.ub.size()) + "-byte unified buffer");
        }
        buffer.start = start;
        buffer.bytes = bytes;
        core.allocated = start + bytes;
    }
};

struct DataCopyExtParams {
    DataCopyExtParams(uint16_t count, uint32_t len, uint32_t srcStrideIn, uint32_t dstStrideIn, uint32_t rsvIn)
        : blockCount(count), blockLen(len), srcStride(srcStrideIn), dstStride(dstStrideIn), rsv(rsvIn)
    {}
    uint16_t blockCount;
    uint32_t blockLen, srcStride, dstStride, rsv;
};

template <typename T>
struct DataCopyPadExtParams {
    bool isPad;
    uint8_t leftPadding, rightPadding;
    T paddingValue;
};

inline void CheckBursts(const DataCopyExtParams& params)
{
    if (params.blockCount < 1 || params.blockCount > ascendc_emulation::MAX_BURSTS) {
        throw Fault("DataCopyPad blockCount " + std::to_string(params.blockCount) + " outside [1, 4095]");
    }
    if (params.blockLen < 1 || params.blockLen > ascendc_emulation::MAX_BURST_BYTES) {
        throw Fault("DataCopyPad blockLen " + std::to_string(params.blockLen) + " outside [1, 2097151] bytes");
    }
}

// Global -> unified buffer: padding is not emulated (the kernel asks for none).
template <typename T>
void DataCopyPad(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const DataCopyExtParams& params,
                 const DataCopyPadExtParams<T>& pad)
{
    if (pad.isPad || pad.leftPadding != 0 || pad.rightPadding != 0) {
        throw Fault("DataCopyPad padding is outside the emulated subset");
    }
    CheckBursts(params);
    ascendc_emulation::Core& core = Running();
    uint32_t base = dst.Aligned("DataCopyPad");
    uint32_t burst = ascendc_emulation::AlignUp(params.blockLen) + params.dstStride * ascendc_emulation::BLOCK_BYTES;
    uint64_t instruction = core.Issue(Pipe::MTE2);
    const uint8_t* from = reinterpret_cast<const uint8_t*>(src.Address());
    for (uint32_t b = 0; b < params.blockCount; ++b) {
        uint32_t at = base + b * burst;
        dst.Checked((at - base) / sizeof(T), ascendc_emulation::AlignUp(params.blockLen) / sizeof(T), "DataCopyPad");
        const uint8_t* source = from + static_cast<uint64_t>(b) * (params.blockLen + params.srcStride);
        ascendc_emulation::CheckGlobal(source, params.blockLen, "DataCopyPad in");
        core.Access(Pipe::MTE2, instruction, at, ascendc_emulation::AlignUp(params.blockLen), true);
        std::memcpy(&core.ub[at], source, params.blockLen);
        std::memset(&core.ub[at + params.blockLen], 0xFF, ascendc_emulation::AlignUp(params.blockLen) - params.blockLen);
    }
    ++ascendc_emulation::Count().copiesIn;
    ascendc_emulation::Count().bytesIn += static_cast<uint64_t>(params.blockCount) * params.blockLen;
}

// Unified buffer -> global: stores, or adds while SetAtomicAdd is on.
template <typename T>
void DataCopyPad(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const DataCopyExtParams& params)
{
    CheckBursts(params);
    ascendc_emulation::Core& core = Running();
    uint32_t base = src.Aligned("DataCopyPad");
    uint32_t burst = ascendc_emulation::AlignUp(params.blockLen) + params.srcStride * ascendc_emulation::BLOCK_BYTES;
    uint64_t instruction = core.Issue(Pipe::MTE3);
    uint8_t* to = reinterpret_cast<uint8_t*>(dst.Address());
    for (uint32_t b = 0; b < params.blockCount; ++b) {
        uint32_t at = base + b * burst;
        src.Checked((at - base) / sizeof(T), params.blockLen / sizeof(T), "DataCopyPad");
        core.Access(Pipe::MTE3, instruction, at, params.blockLen, false);
        uint8_t* target = to + static_cast<uint64_t>(b) * (params.blockLen + params.dstStride);
        ascendc_emulation::CheckGlobal(target, params.blockLen, "DataCopyPad out");
        if (core.atomicAdd) {
            for (uint32_t i = 0; i < params.blockLen / sizeof(T); ++i) {
                T value, added;
                std::memcpy(&value, target + i * sizeof(T), sizeof(T));
                std::memcpy(&added, &core.ub[at + i * sizeof(T)], sizeof(T));
                value += added;
                std::memcpy(target + i * sizeof(T), &value, sizeof(T));
            }
        } else {
            std::memcpy(target, &core.ub[at], params.blockLen);
            ascendc_emulation::CountStores(target, params.blockLen);
        }
    }
    ++ascendc_emulation::Count().copiesOut;
    ascendc_emulation::Count().bytesOut += static_cast<uint64_t>(params.blockCount) * params.blockLen;
}

// A vector instruction over `count` elements: its operands checked, read and written on the V pipe.
template <typename T, typename Body>
void Vector(const char* what, uint32_t count, const LocalTensor<T>& dst, std::initializer_list<LocalTensor<T>> srcs,
            bool dstRead, Body body)
{
    ascendc_emulation::Core& core = Running();
    uint32_t bytes = count * static_cast<uint32_t>(sizeof(T));
    uint64_t instruction = core.Issue(Pipe::V);
    for (const LocalTensor<T>& src : srcs) {
        core.Access(Pipe::V, instruction, src.Aligned(what), bytes, false);
        src.Checked(0, count, what);
    }
    uint32_t target = dst.Aligned(what);
    dst.Checked(0, count, what);
    if (dstRead) {
        core.Access(Pipe::V, instruction, target, bytes, false);
    }
    core.Access(Pipe::V, instruction, target, bytes, true);
    body();
    ++ascendc_emulation::Count().vectorOps;
}

template <typename T>
void Axpy(const LocalTensor<T>& dst, const LocalTensor<T>& src, T scalar, uint32_t count)
{
    Vector("Axpy", count, dst, {src}, true, [&] {
        T* out = dst.Data();
        const T* in = src.Data();
        for (uint32_t i = 0; i < count; ++i) {
            out[i] = in[i] * scalar + out[i];
        }
    });
}

template <typename T>
void Muls(const LocalTensor<T>& dst, const LocalTensor<T>& src, T scalar, uint32_t count)
{
    Vector("Muls", count, dst, {src}, false, [&] {
        T* out = dst.Data();
        const T* in = src.Data();
        for (uint32_t i = 0; i < count; ++i) {
            out[i] = in[i] * scalar;
        }
    });
}

template <typename T>
void Mul(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b, uint32_t count)
{
    Vector("Mul", count, dst, {a, b}, false, [&] {
        T* out = dst.Data();
        const T* left = a.Data();
        const T* right = b.Data();
        for (uint32_t i = 0; i < count; ++i) {
            out[i] = left[i] * right[i];
        }
    });
}

template <typename T>
void Duplicate(const LocalTensor<T>& dst, T scalar, uint32_t count)
{
    Vector("Duplicate", count, dst, {}, false, [&] { std::fill(dst.Data(), dst.Data() + count, scalar); });
}

}  // namespace AscendC

namespace AscendC {

// WholeReduceSum (WholeReduceSum.md), the continuous-mask form: each of `repeatTime` repeats sums the first
// `mask` elements (at most 64 floats) of its source, read in 32-byte blocks `srcBlkStride` blocks apart,
// repeats `srcRepStride` blocks apart, pairwise as a binary tree, into dst[r * dstRepStride]. The source
// starts 32-byte aligned, the destination 4-byte aligned.
template <typename T>
void WholeReduceSum(const LocalTensor<T>& dst, const LocalTensor<T>& src, int32_t mask, int32_t repeatTime,
                    int32_t dstRepStride, int32_t srcBlkStride, int32_t srcRepStride)
{
    static_assert(std::is_same<T, float>::value, "the emulation reduces float32 only");
    constexpr int32_t perBlock = ascendc_emulation::BLOCK_BYTES / sizeof(T);
    if (mask < 1 || mask > 64) {
        throw Fault("WholeReduceSum mask " + std::to_string(mask) + " outside [1, 64] for float");
    }
    if (repeatTime < 0 || repeatTime > 255) {
        throw Fault("WholeReduceSum repeatTime " + std::to_string(repeatTime) + " outside [0, 255]");
    }
    ascendc_emulation::Core& core = Running();
    uint64_t instruction = core.Issue(Pipe::V);
    src.Aligned("WholeReduceSum");
    for (int32_t r = 0; r < repeatTime; ++r) {
        std::vector<T> values(mask);
        for (int32_t i = 0; i < mask; ++i) {
            uint32_t element = r * srcRepStride * perBlock + (i / perBlock) * srcBlkStride * perBlock + i % perBlock;
            uint32_t byte = src.Checked(element, 1, "WholeReduceSum");
            core.Access(Pipe::V, instruction, byte, sizeof(T), false);
            std::memcpy(&values[i], &core.ub[byte], sizeof(T));
        }
        for (size_t width = values.size(); width > 1; width = (width + 1) / 2) {
            for (size_t i = 0; i < width / 2; ++i) {
                values[i] = values[2 * i] + values[2 * i + 1];
            }
            if (width % 2 == 1) {
                values[width / 2] = values[width - 1];
            }
        }
        uint32_t byte = dst.Checked(r * dstRepStride, 1, "WholeReduceSum");
        core.Access(Pipe::V, instruction, byte, sizeof(T), true);
        std::memcpy(&core.ub[byte], values.data(), sizeof(T));
    }
    ++ascendc_emulation::Count().vectorOps;
}

}  // namespace AscendC
