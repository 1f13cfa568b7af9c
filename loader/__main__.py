from diffobj.entry import patch_ctl

patch_ctl()
