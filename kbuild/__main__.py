from diffobj.entry import patch_build

patch_build()
