// Package rootfs turns a Glance image into a container root filesystem.
//
// It has three parts:
//
//   - Sources (GlanceSource, LocalSource) give an image's metadata and bytes.
//   - Cache downloads an image once into a local directory, verifying its
//     hash on the way, and keeps its metadata next to it (ReadMeta reads it
//     back).
//   - Mounter makes one read-only base per image, shared by all its
//     instances, and gives every instance its own writable overlayfs on top.
//
// # Formats
//
// Prepare decides from the image's disk_format and container_format
// (CheckFormat: raw, qcow2 or root-tar, container bare; an empty format
// lets the bytes decide) and from the bytes themselves; bytes that do not
// match the metadata are refused (ErrInvalidImage):
//
//   - raw holding a bare filesystem (ext2/3/4, xfs, btrfs, squashfs): a
//     read-only loop device, mounted read-only. A filesystem whose
//     superblock claims more bytes than the image has (truncated) is
//     refused.
//   - raw holding a partitioned disk, GPT (512- or 4096-byte sectors,
//     header and entry CRCs checked) or MBR (primary and logical
//     partitions). The root is the partition named by the image property
//     os_root_partition (RootPartitionProperty: a 1-based partition number
//     as the kernel numbers it, MBR logical partitions from 5), else the
//     largest partition holding a supported filesystem, preferring
//     partitions whose type says Linux root (GPT discoverable-partition root
//     types), then Linux data (GPT 0FC63DAF-…, MBR 0x83). The filesystem is
//     found by its bytes; the type is only a hint. A table with a partition
//     past the end of the disk is refused. The loop device covers just the
//     partition (LOOP_CONFIGURE offset and size limit), no kpartx.
//   - qcow2: the header is parsed here before any QEMU tool opens the file,
//     and images with a backing file or an external data file are refused
//     (ErrUnsafeImage: they make the host open files the image names), as
//     are encrypted ones and those whose metadata points past the end of
//     the file (truncated); "qemu-img info" is asked as well. The image is
//     then exposed as a raw disk — through qemu-nbd on a free /dev/nbdN when
//     the nbd module is there (flock'ed allocation, BLKFLSBUF and disconnect
//     on release), else through qemu-storage-daemon exporting it read-only
//     over FUSE as a file (with "backing": null) — and that raw view is
//     handled as a raw image above.
//   - root tarballs (disk_format root-tar, or raw data that is a tar):
//     plain, gzip, bzip2, xz (through the xz program when installed) or zstd,
//     told by magic bytes. The tree is extracted once into a temporary
//     directory under the base directory and renamed into place. Nothing is
//     written outside it: absolute member names and ".." escapes are refused
//     (ErrUnsafeImage; "./" prefixes are fine), nothing is ever written
//     below a symlink (even one pointing inside), hard links must name an
//     earlier member, and every operation goes through an os.Root. Device
//     nodes are skipped and setuid/setgid bits (and file capabilities)
//     stripped, with a warning, unless TarOptions allow them. Numeric owners,
//     modes and times are restored; extended attributes if TarOptions.Xattrs
//     (never trusted.*). A tarball holding an LXD image (rootfs/ next to
//     metadata.yaml and templates/) is unpacked from its rootfs/.
//
// # Layout
//
// Under the base directory:
//
//	<id>              the image's base: a read-only mount point, or the
//	                  extracted tarball (read-only by convention)
//	.state/<id>.json  the base record (see below)
//	.state/<id>.fuse  the FUSE export file of a qcow2 image, and <id>.pid
//	.tmp-<id>-*       a tarball being extracted
//	.idmap/<key>/<id> the idmapped view of base <id> for the id map <key>
//	                  (u0-100000-65536_g0-100000-65536), a mount point
//	.idmap/<key>.copy/<id>
//	                  a shifted copy of base <id>, where no view can be made
//
// and per instance <instanceDir>/rootfs (the overlay) and
// <instanceDir>/overlay/{upper,work}, plus <instanceDir>/overlay/idmap for
// an unprivileged instance. Release unmounts an instance's overlay
// and deletes its changes, then releases every base no overlay uses any
// more: mount, loop device, nbd device, FUSE export and its daemon. An
// extracted tarball is kept as a cache until RemoveBase (eviction).
//
// # Unprivileged instances
//
// With WithIDMap (nova's [libvirt] uid_maps and gid_maps), new instances
// are made for containers whose root is a high host id. No file of the
// image is chowned, on any start:
//
//   - The overlay's lower layer is an idmapped view of the base
//     (mount_setattr MOUNT_ATTR_IDMAP on a clone of the base mount or
//     tarball directory, read-only): a file owned by N on disk appears
//     owned by the host id of container id N. One view per image and map,
//     shared by its instances, made by the first Prepare and unmounted with
//     the base when no overlay uses it. overlayfs itself cannot be
//     idmapped (EINVAL), and the kernel takes idmapped layers from Linux
//     5.19; ext4, xfs, btrfs, squashfs and tmpfs bases can be idmapped.
//   - The upper directory's root gets the view root's owner and mode when
//     it is made: the one chown, of an empty directory. Files the container
//     creates or copies up are stored with its host ids (100000…), so the
//     upper directory holds a shifted tree; the base is never written.
//   - The instance's map is recorded in <instanceDir>/overlay/idmap. A
//     later Prepare (after a reboot) uses the recorded map, or none, not
//     the Mounter's current one: an instance made privileged stays so.
//   - Where the view cannot be made (older kernel, a filesystem without
//     idmapped mount support) the base is copied once with its owners
//     shifted (idmap.ShiftedCopy) to .idmap/<key>.copy/<id>, which then is
//     the lower layer of every instance of the image with that map. The
//     copy is a cache like an extracted tarball: kept after the last
//     Release, counted by DerivedSize, deleted by RemoveBase.
//
// The container's root must be able to reach the rootfs: the instance
// directory and its parents must be searchable by others (mode o+x).
//
// # Crash safety
//
// Every mount, loop device, nbd device, FUSE export and temporary file is
// registered in an undo stack as it is made: a failing Prepare releases all
// of it. So that a kill of the agent between two steps leaks nothing
// either, Prepare writes a base record (.state/<id>.json) before it creates
// each resource and updates it after: the image file, loop device, nbd
// device, qemu-storage-daemon pid and start time, boot id. Recover, run at
// agent start, releases every base no overlay uses by its record (and
// half-built ones, temporary directories, FUSE daemons exporting into
// .state that no record claims, loop devices bound unmounted to our files),
// reports overlays of instances the caller does not know without touching
// them, and after a host reboot (another boot id) only removes the stale
// records and files: their pids and device numbers may be someone else's
// now. The mount table stays the truth about what is in use; processes are
// identified by pid, start time and the export path in their command line,
// never by name.
//
// Mounter uses loop devices, mount(2) and QEMU tools and therefore needs
// CAP_SYS_ADMIN (root) and Linux.
package rootfs
