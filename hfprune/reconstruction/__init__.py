"""Weight reconstruction (hfprune extension): refit the kept weights to the dense layers' outputs by least squares."""
