from patch_build.diffobj.entry import patch_report

patch_report()
