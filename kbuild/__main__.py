from patch_build.diffobj.entry import patch_build

patch_build()
