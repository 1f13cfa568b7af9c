from diffobj.entry import patch_diff

patch_diff()
