/* Framework-free C API over tf-dcn's GPU launchers, for testing them without TensorFlow. C++ only
 * (the dims are the kernels' C++ structs); the callers are ctypes (capi_ctypes.py).
 *
 * Built two ways from capi.cc:
 *   - on a GPU by tests/gpu/run.sh (clang-19): the CUDA launchers of cc/kernels (.cu files),
 * device pointers, a cudaStream_t, cuBLAS for the matrix products; driven by check_gpu.py against
 *     torchvision on CUDA;
 *   - everywhere by `make build` (g++, TF_DCN_CAPI_EMULATION): the *same launcher code* run by
 *     the host executor with host pointers and a plain-loop GEMM; driven by
 *     tests/test_gpu_emulation_{conv,pool}.py against the NumPy references.
 *
 * type: 0 float16, 1 bfloat16, 2 float32, 3 float64 (tf_dcn::ElementType).
 * The dimensions are the kernels' own structs, passed by pointer: tf_dcn::DeformConv2DDims
 * (deform_conv2d_geometry.h) and tf_dcn::DeformPSRoIPoolDims (deform_psroi_pool_geometry.h:
 * features [batch, height, width, channels], channels = output_dim * group_size^2; rois
 * [num_rois, 5], float64 when rois_double else float32, batch indices already valid; offsets
 * [num_rois, part_size, part_size, 2*num_classes], x before y, read only when use_offsets;
 * num_classes is 1 without offsets; spatial_scale and trans_std float32 like the op's
 * attributes). tests/gpu/capi_ctypes.py mirrors both with ctypes and checks the mirror against
 * the tfdcn_*_dims_size / _field_count / _field_offset functions below.
 * Every launcher returns 0 or an error code; tfdcn_error_string explains it.
 */
#ifndef TF_DCN_TESTS_GPU_CAPI_H_
#define TF_DCN_TESTS_GPU_CAPI_H_

#include <stdint.h>

#include "cc/kernels/deform_conv2d_geometry.h"
#include "cc/kernels/deform_psroi_pool_geometry.h"

extern "C" {

typedef tf_dcn::DeformConv2DDims TfDcnConvDims;
typedef tf_dcn::DeformPSRoIPoolDims TfDcnPoolDims;

const char* tfdcn_error_string(int code);
/* 1 for the CUDA build, 0 for the host emulation. */
int tfdcn_on_device(void);

/* Layout of the two dims structs: sizeof, number of fields, offset of a field (-1: no such). */
int64_t tfdcn_conv_dims_size(void);
int64_t tfdcn_conv_dims_field_count(void);
int64_t tfdcn_conv_dims_field_offset(const char* name);
int64_t tfdcn_pool_dims_size(void);
int64_t tfdcn_pool_dims_field_count(void);
int64_t tfdcn_pool_dims_field_offset(const char* name);

int tfdcn_conv_workspace_bytes(int type, const TfDcnConvDims* dims, int deterministic, int backward,
                               int64_t* bytes);
int tfdcn_conv_forward(int type, const TfDcnConvDims* dims, int deterministic, void* stream,
                       const void* input, const void* offsets, const void* mask, const void* kernel,
                       const void* bias, void* output, void* workspace, int64_t workspace_bytes);
int tfdcn_conv_backward(int type, const TfDcnConvDims* dims, int deterministic, void* stream,
                        const void* input, const void* offsets, const void* mask,
                        const void* kernel, const void* grad_output, void* grad_input,
                        void* grad_offsets, void* grad_mask, void* grad_kernel, void* grad_bias,
                        void* workspace, int64_t workspace_bytes);

/* Deformable (PS-)RoI pooling. The forward pass needs no workspace (0 bytes). grad_features is
 * always written; grad_offsets only when use_offsets (may be NULL otherwise). */
int tfdcn_pool_workspace_bytes(int type, int rois_double, const TfDcnPoolDims* dims,
                               int deterministic, int backward, int64_t* bytes);
int tfdcn_pool_forward(int type, int rois_double, const TfDcnPoolDims* dims, int deterministic,
                       void* stream, const void* features, const void* rois, const void* offsets,
                       void* output, void* workspace, int64_t workspace_bytes);
int tfdcn_pool_backward(int type, int rois_double, const TfDcnPoolDims* dims, int deterministic,
                        void* stream, const void* features, const void* rois, const void* offsets,
                        const void* grad_output, void* grad_features, void* grad_offsets,
                        void* workspace, int64_t workspace_bytes);

/* The batch-index check of the pooling ops: writes {first bad RoI (num_rois if none), its
 * rois[r, 0]} (int64, float64) into host_result, which on the GPU must be pinned host memory;
 * scratch is 16 bytes of device memory. Asynchronous on the GPU: synchronise the stream first. */
int tfdcn_pool_check_batch_indices(int rois_double, int64_t num_rois, int64_t batch, void* stream,
                                   const void* rois, void* scratch, void* host_result);

/* 0 when a CUDA 12 runtime and a driver for CUDA 12.0 or newer are present (always 0 in the
 * emulation), else the error code (tfdcn_error_string explains it). */
int tfdcn_driver_status(void);

}  // extern "C"

#endif /* TF_DCN_TESTS_GPU_CAPI_H_ */
