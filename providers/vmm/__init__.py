"""MicroVMs: what a machine needs (:mod:`spec`), the hypervisor drivers behind one
interface (:mod:`base`; :mod:`qemu`, :mod:`firecracker`, :mod:`cloud_hypervisor`), the
guest kernel (:mod:`kernel`, :mod:`initramfs`), the network hook (:mod:`network`) and
the machine lifecycle the host agent calls (:mod:`machines`).
"""
