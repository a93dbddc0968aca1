# A stand-in for a Slicer build tree (Slicer_DIR), so that the extension's CMake code can be configured without
# Slicer: `cmake -S <repository> -B <build> -DSlicer_DIR=<this folder>` (tests/test_plugin.py). It defines what an
# extension made from Slicer's template uses, and checks what Slicer's own macros would need:
# - Slicer_USE_FILE: slicerMacroBuildScriptedModule (every SCRIPTS and RESOURCES file exists),
#   SlicerMacroBuildScriptedCLI (<NAME>.py and <NAME>.xml exist, as the macro copies and installs both);
# - Slicer_EXTENSION_GENERATE_CONFIG: the EXTENSION_* variables are set;
# - Slicer_EXTENSION_CPACK: the extension description <EXTENSION_NAME>.s4ext is written to the build tree, in the
#   format of Slicer's slicerFunctionGenerateExtensionDescription (keyword, space, value), and the modules found are
#   listed in modules.txt ("<kind> <name> <source dir>").
set(Slicer_FOUND TRUE)
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/GenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/ExtensionCPack.cmake")
