"""Seeing occupancy: colours, a numpy voxel rasteriser, PNG/MP4/GIF rendering, file/bag loaders, Open3D viewer.

The small API other modules use:
  render_comparison(pred, gt, out_png, mask=None, title=...) -> RenderResult   (prediction | ground truth)
  render_bev(grid, out_png) -> RenderResult                                    (bird's-eye view + legend)
Open3D is optional (the `view` extra) and imported only where it is used.
"""

from flashocc_ros.viz.render import RenderResult, render_bev, render_comparison, render_video

__all__ = ["RenderResult", "render_bev", "render_comparison", "render_video"]
