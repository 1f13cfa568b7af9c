from diffobj.entry import patch_report

patch_report()
