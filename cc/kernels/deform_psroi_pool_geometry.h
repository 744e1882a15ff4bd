// Sizes of a deformable (PS-)RoI pooling: shared by the kernels' validation, the CPU functors and
// the CUDA launchers. Plain C++, no TensorFlow headers.
#ifndef TF_DCN_CC_KERNELS_DEFORM_PSROI_POOL_GEOMETRY_H_
#define TF_DCN_CC_KERNELS_DEFORM_PSROI_POOL_GEOMETRY_H_

#include <cstdint>

namespace tf_dcn {

// Every size a deformable PS-RoI pooling kernel needs, validated by the op shim.
// features [batch, height, width, channels] with channels = output_dim * group_size^2;
// rois [num_rois, 5]; offsets [num_rois, part_size, part_size, 2*num_classes] when use_offsets;
// output [num_rois, pooled_size, pooled_size, output_dim].
struct DeformPSRoIPoolDims {
  int64_t batch = 0, height = 0, width = 0, channels = 0;
  int64_t num_rois = 0;
  int64_t output_dim = 0, group_size = 0, pooled_size = 0, part_size = 0, sample_per_part = 0;
  int64_t num_classes = 1;  // offset classes; 1 without offsets
  float spatial_scale = 1.0f, trans_std = 0.0f;
  bool use_offsets = false;

  int64_t channels_each_class() const { return output_dim / num_classes; }
  int64_t offset_channels() const { return 2 * num_classes; }
  int64_t group_cells() const { return group_size * group_size; }
  int64_t bins() const { return pooled_size * pooled_size; }
  int64_t samples_per_bin() const { return sample_per_part * sample_per_part; }
  int64_t plane_size() const { return height * width * channels; }  // one image of features
  int64_t output_size() const { return num_rois * bins() * output_dim; }
  int64_t offsets_size() const { return num_rois * part_size * part_size * offset_channels(); }
};

}  // namespace tf_dcn

#endif  // TF_DCN_CC_KERNELS_DEFORM_PSROI_POOL_GEOMETRY_H_
