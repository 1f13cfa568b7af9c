from patch_build.diffobj.entry import patch_ctl

patch_ctl()
