// Package rootfs turns a Glance image into a container root filesystem.
//
// It has three parts:
//
//   - Sources (GlanceSource, LocalSource) give an image's metadata and bytes.
//   - Cache downloads an image once into a local directory, verifying its
//     hash on the way, and keeps its metadata next to it.
//   - Mounter loop-mounts a cached raw filesystem image read-only, once per
//     image, and gives every instance its own writable overlayfs on top.
//
// Mounter uses loop devices and mount(2) directly and therefore needs
// CAP_SYS_ADMIN (root) and Linux. The mount table (/proc/self/mountinfo) is
// the only state: nothing is remembered between calls, so Release works
// after an agent restart.
package rootfs
