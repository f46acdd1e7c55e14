"""Single-voxel (f)MRS: reading, preprocessing, basis sets, linear-combination fitting and quantification."""
