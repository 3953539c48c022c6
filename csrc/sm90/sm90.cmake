# The Hopper (sm_90a) forward and backward as a static library, for the top-level CMakeLists when 90a is among the
# CUDA architectures:
#   include(csrc/sm90/sm90.cmake)
#   jax_flash_add_sm90_kernels(jax_flash_sm90 "${JAX_FLASH_HEAD_DIMS}" "${CUTLASS_INCLUDE_DIR}")
#   target_link_libraries(_jax_flash_ext PRIVATE jax_flash_sm90)
# Only the head-dim tiles (64, 128, 256) that cover the requested head dims are compiled; the dispatchers route
# every head dim to the smallest compiled tile that holds it; the backward has the same tiles.
function(jax_flash_add_sm90_kernels target head_dims cutlass_include)
  set(tiles "")
  foreach(d IN LISTS head_dims)
    if(d LESS_EQUAL 64)
      list(APPEND tiles 64)
    elseif(d LESS_EQUAL 128)
      list(APPEND tiles 128)
    else()
      list(APPEND tiles 256)
    endif()
  endforeach()
  list(REMOVE_DUPLICATES tiles)

  set(sources "${PROJECT_SOURCE_DIR}/csrc/sm90/flash_fwd_sm90.cu" "${PROJECT_SOURCE_DIR}/csrc/sm90/flash_bwd_sm90.cu")
  set(definitions CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED)
  foreach(t IN LISTS tiles)
    list(APPEND sources "${PROJECT_SOURCE_DIR}/csrc/sm90/flash_fwd_sm90_hdim${t}_bf16.cu"
                        "${PROJECT_SOURCE_DIR}/csrc/sm90/flash_fwd_sm90_hdim${t}_fp16.cu"
                        "${PROJECT_SOURCE_DIR}/csrc/sm90/flash_bwd_sm90_hdim${t}_bf16.cu"
                        "${PROJECT_SOURCE_DIR}/csrc/sm90/flash_bwd_sm90_hdim${t}_fp16.cu")
    list(APPEND definitions JAX_FLASH_SM90_TILE_${t}=1)
  endforeach()

  add_library(${target} STATIC ${sources})
  # wgmma and setmaxnreg exist only in the architecture-specific sm_90a target, written in the -gencode form (the
  # -arch=sm_90a shorthand also runs a plain sm_90 pass that rejects them).
  set_target_properties(${target} PROPERTIES CUDA_ARCHITECTURES OFF POSITION_INDEPENDENT_CODE ON)
  target_include_directories(${target} PUBLIC "${PROJECT_SOURCE_DIR}/csrc" PRIVATE "${cutlass_include}")
  target_compile_definitions(${target} PRIVATE ${definitions} NDEBUG)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-O3 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a>)
  target_link_libraries(${target} PUBLIC CUDA::cudart_static)
  message(STATUS "jax_flash: sm90 head-dim tiles ${tiles} (forward and backward)")
endfunction()
