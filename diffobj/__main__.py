from patch_build.diffobj.entry import patch_diff

patch_diff()
