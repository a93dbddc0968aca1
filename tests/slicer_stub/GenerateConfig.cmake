# Stand-in for Slicer's SlicerExtensionGenerateConfig.cmake (see SlicerConfig.cmake).
foreach(var EXTENSION_NAME EXTENSION_HOMEPAGE EXTENSION_CATEGORY EXTENSION_CONTRIBUTORS EXTENSION_DESCRIPTION
            EXTENSION_ICONURL EXTENSION_SCREENSHOTURLS EXTENSION_DEPENDS)
  if("${${var}}" STREQUAL "")
    message(FATAL_ERROR "error: ${var} is either NOT defined or empty.")
  endif()
endforeach()
