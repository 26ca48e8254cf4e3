# needs: modules
# Loads that name no file: finit_module on a memfd and init_module from a buffer.
DUMMY=$(modpath dummy)
plain_module dummy /tmp/dummy.ko
act sha_plain sha256sum /tmp/dummy.ko
act sha_compressed sha256sum "$DUMMY"
watch_start main
act memfd_plain /usr/bin/mtcall finit-module --memfd /tmp/dummy.ko --params numdummies=1 --flags 0
act unload_memfd_plain /sbin/rmmod dummy
# Params on a page not yet resident: readable only after the kernel's copy.
act memfd_untouched /usr/bin/mtcall finit-module --memfd /tmp/dummy.ko --params-ptr untouched --flags 0
act unload_memfd_untouched /sbin/rmmod dummy
case "$DUMMY" in
*.xz)
    # The kernel decompresses when asked with MODULE_INIT_COMPRESSED_FILE (4).
    act memfd_compressed /usr/bin/mtcall finit-module --memfd "$DUMMY" --params numdummies=1 --flags 4
    act unload_memfd_compressed /sbin/rmmod dummy
    ;;
esac
act image /usr/bin/mtcall init-module --image /tmp/dummy.ko --params numdummies=1
act unload_image /sbin/rmmod dummy
act bad_fd /usr/bin/mtcall finit-module --fd -1 --params "" --flags 0
watch_stop
