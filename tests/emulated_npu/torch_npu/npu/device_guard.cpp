// The emulated NPU's device guard, in C++ because the Python one torch offers
// (torch/csrc/acc/Module.cpp) reports a device count of 1 and current device 0:
// the autograd engine then has no queue for npu:1 and stops at an internal
// assert on any backward there. Streams and events are no-ops, as there: the
// emulated device finishes each operator when it is issued.
#include <c10/core/impl/DeviceGuardImplInterface.h>

namespace {

// The autograd engine reads the count once per process, so it is the largest
// host the emulation models (an 8-NPU server), not the EMULATED_NPU_DEVICES of
// the moment; torch.npu.device_count() reports that.
constexpr c10::DeviceIndex kHostDevices = 8;
// Per thread, as on a real device: the engine's thread for npu:1 runs there.
thread_local c10::DeviceIndex current = 0;

struct EmulatedNpuGuard final : c10::impl::DeviceGuardImplInterface {
  c10::DeviceType type() const override { return c10::DeviceType::PrivateUse1; }
  c10::Device exchangeDevice(c10::Device device) const override {
    c10::Device previous = getDevice();
    setDevice(device);
    return previous;
  }
  c10::Device getDevice() const override { return c10::Device(type(), current); }
  void setDevice(c10::Device device) const override { current = device.index(); }
  void uncheckedSetDevice(c10::Device device) const noexcept override { current = device.index(); }
  c10::Stream getStream(c10::Device device) const override {
    return c10::Stream(c10::Stream::DEFAULT, device);
  }
  c10::Stream getNewStream(c10::Device device, int) const override { return getStream(device); }
  c10::Stream exchangeStream(c10::Stream stream) const override { return getStream(stream.device()); }
  c10::DeviceIndex deviceCount() const noexcept override { return kHostDevices; }
  void record(void**, const c10::Stream&, const c10::DeviceIndex, const c10::EventFlag) const override {}
  void block(void*, const c10::Stream&) const override {}
  bool queryEvent(void*) const override { return true; }
  void destroyEvent(void*, const c10::DeviceIndex) const noexcept override {}
  bool queryStream(const c10::Stream&) const override { return true; }
  void synchronizeStream(const c10::Stream&) const override {}
};

}  // namespace

extern "C" {
int emulated_npu_host_devices() { return kHostDevices; }
int emulated_npu_current_device() { return current; }
void emulated_npu_set_device(int index) { current = static_cast<c10::DeviceIndex>(index); }
// After torch's Python-backend setup has registered its own guard: this one replaces it.
void emulated_npu_register_guard() {
  static c10::impl::DeviceGuardImplRegistrar registrar(c10::DeviceType::PrivateUse1, new EmulatedNpuGuard());
}
}
