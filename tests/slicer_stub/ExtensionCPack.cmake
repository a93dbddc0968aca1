# Stand-in for Slicer's SlicerExtensionCPack.cmake (see SlicerConfig.cmake).
if(NOT DEFINED EXTENSION_BUILD_SUBDIRECTORY)
  set(EXTENSION_BUILD_SUBDIRECTORY ".")
endif()
if(NOT DEFINED EXTENSION_ENABLED)
  set(EXTENSION_ENABLED 1)
endif()
file(WRITE "${CMAKE_BINARY_DIR}/${EXTENSION_NAME}.s4ext"
"depends ${EXTENSION_DEPENDS}
build_subdirectory ${EXTENSION_BUILD_SUBDIRECTORY}
homepage ${EXTENSION_HOMEPAGE}
contributors ${EXTENSION_CONTRIBUTORS}
category ${EXTENSION_CATEGORY}
iconurl ${EXTENSION_ICONURL}
status ${EXTENSION_STATUS}
description ${EXTENSION_DESCRIPTION}
screenshoturls ${EXTENSION_SCREENSHOTURLS}
enabled ${EXTENSION_ENABLED}
")
get_property(modules GLOBAL PROPERTY STUB_SLICER_MODULES)
string(REPLACE ";" "\n" modules "${modules}")
file(WRITE "${CMAKE_BINARY_DIR}/modules.txt" "${modules}\n")
